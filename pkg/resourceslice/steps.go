package resourceslice

import (
	"maps"
	"slices"

	apiequality "k8s.io/apimachinery/pkg/api/equality"
	draslices "k8s.io/dynamic-resource-allocation/resourceslice"
)

// Steps returns the publications that lead from prev, what the publication
// controller was last given, to next, each differing from the one before in
// at most one slice; the last is next.
//
// The controller (k8s.io/dynamic-resource-allocation/resourceslice) updates a
// single changed slice in place under the pool's generation, but when more
// than one slice changes it bumps the generation and rewrites the slices one
// by one. Until the last rewrite lands the pool holds slices of two
// generations, and the scheduler's allocator neither allocates from an
// incomplete pool nor says why: a pod scheduled in that window goes to another
// node or waits for a retry. Under withdrawal, a claim of several GPUs, or two
// claims prepared or unprepared together, change several per-GPU slices, so
// handing the change over one slice at a time keeps the pool complete.
//
// A change that cannot be made one slice at a time (no prev, pools added or
// removed, a slice added or removed, or a pool's node selection changed) is a
// single step: the controller must bump the generation for it anyway.
func Steps(prev *draslices.DriverResources, next draslices.DriverResources) []draslices.DriverResources {
	if prev == nil || !sameLayout(*prev, next) {
		return []draslices.DriverResources{next}
	}
	type change struct {
		pool  string
		index int
	}
	var changes []change
	for _, name := range slices.Sorted(maps.Keys(next.Pools)) {
		was, now := prev.Pools[name].Slices, next.Pools[name].Slices
		for i := range now {
			if !apiequality.Semantic.DeepEqual(was[i], now[i]) {
				changes = append(changes, change{name, i})
			}
		}
	}
	if len(changes) <= 1 {
		return []draslices.DriverResources{next}
	}
	steps := make([]draslices.DriverResources, 0, len(changes))
	current := *prev.DeepCopy()
	for _, c := range changes[:len(changes)-1] {
		pool := current.Pools[c.pool]
		pool.Slices = slices.Clone(pool.Slices)
		pool.Slices[c.index] = next.Pools[c.pool].Slices[c.index]
		current.Pools = maps.Clone(current.Pools)
		current.Pools[c.pool] = pool
		steps = append(steps, current)
	}
	return append(steps, next)
}

// sameLayout reports whether a and b have the same pools, each with the same
// number of slices and the same node selection, so that only slice contents
// differ.
func sameLayout(a, b draslices.DriverResources) bool {
	if len(a.Pools) != len(b.Pools) {
		return false
	}
	for name, pa := range a.Pools {
		pb, ok := b.Pools[name]
		if !ok || len(pa.Slices) != len(pb.Slices) || pa.AllNodes != pb.AllNodes || pa.Generation != pb.Generation ||
			!apiequality.Semantic.DeepEqual(pa.NodeSelector, pb.NodeSelector) {
			return false
		}
	}
	return true
}
