package resourceslice

import (
	"maps"
	"slices"
	"strconv"
	"strings"

	resourceapi "k8s.io/api/resource/v1"
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

// Held returns prev with each slice of the pool as the API server holds it
// (stored: the pool's slices as listed), which is what the publication
// controller compares the next publication with; ok is false unless the API
// server holds the whole pool at one generation in prev's layout (the
// controller then bumps the generation whatever it is handed).
//
// Steps counted from Held change one stored slice at a time where steps
// counted from what this process last handed over may not: in a rolling
// update two plugin instances publish the same pool, and a slice the other
// instance changed since counts as a second change.
//
// The controller names each slice of a pool with its index in hexadecimal,
// zero-padded to the same length in every slice of the pool, before the first
// '-' (k8s.io/dynamic-resource-allocation/resourceslice, encodeIndex and
// getIndexLength), and matches stored slices to the ones it is handed by it;
// a slice whose prefix is not of that length it treats as obsolete
// (decodeIndex), and so does Held.
func Held(prev draslices.DriverResources, pool string, stored []resourceapi.ResourceSlice) (held draslices.DriverResources, ok bool) {
	p, found := prev.Pools[pool]
	if !found || len(stored) != len(p.Slices) || len(stored) == 0 {
		return prev, false
	}
	held = *prev.DeepCopy()
	hp := held.Pools[pool]
	seen := make([]bool, len(hp.Slices))
	for _, s := range stored {
		if s.Spec.Pool.Name != pool || s.Spec.Pool.Generation != stored[0].Spec.Pool.Generation ||
			s.Spec.Pool.ResourceSliceCount != int64(len(stored)) {
			return prev, false
		}
		prefix, _, cut := strings.Cut(s.Name, "-")
		i, err := strconv.ParseInt(prefix, 16, 0)
		if !cut || len(prefix) != indexLength(len(stored)) || err != nil || i < 0 || int(i) >= len(seen) || seen[i] {
			return prev, false
		}
		seen[i] = true
		hp.Slices[i].Devices = s.Spec.Devices
		hp.Slices[i].SharedCounters = s.Spec.SharedCounters
	}
	held.Pools[pool] = hp
	return held, true
}

// indexLength is the length of the index prefix the publication controller
// gives every slice of a pool of n slices: n-1 in hexadecimal, at least 5
// characters (getIndexLength, resourceSliceIndexMinLength).
func indexLength(n int) int {
	return max(5, len(strconv.FormatInt(int64(n-1), 16)))
}
