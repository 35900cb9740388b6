package scheduler

import (
	"slices"
	"sync"

	"github.com/tessera-gpu/tessera/pkg/placement"
)

// maxCachedDeltas bounds the deltas a node keeps for one state: a cluster
// has a handful of distinct requests at a time, and a burst of one kind
// (a Job's pods) asks the same of every node.
const maxCachedDeltas = 32

// fragCache is a node's fragmentation for the state it was last scored in,
// and the deltas of the requests scored since. Recomputing it for every pod
// was most of a score's cost (docs/benchmarks.md). It is keyed by all that
// the score reads of the node (unrequested CPU and memory, and the
// allocated state's snapshot), so every allocation or deallocation the
// scheduler reports for the node, and every pod bound to it, replaces the
// entry the next time the node is scored: it is never stale, and it needs
// no event handlers of its own.
type fragCache struct {
	mu          sync.Mutex
	valid       bool
	cpu, memory int64
	snap        []int
	spare       []int
	base        float64
	deltas      map[cacheKey]scored
}

type cacheKey struct {
	r   placement.Request
	mig migRequest
	// weights is the version of the demand's weights the choice was
	// modelled with: a new version may move a MIG request's partition.
	weights uint64
}

type scored struct {
	delta float64
	ok    bool
}

// delta is how much the pod's request changes the node's fragmentation
// (ok false: it does not fit), from the cache when the node is as it was.
func (p *Plugin) delta(g *nodeGPUs, s *cycleState, cpu, memory int64) (float64, bool) {
	if !p.cached {
		snap := g.snapshotOf(s.allocated[g], nil)
		n := placement.Node{CPU: cpu, Memory: memory, Free: snap[:len(g.whole)]}
		d := g.assess(s.workload, n, g.base(s.workload, n, snap), s.request, s.mig, snap, s.choice, s.weights, p.memo)
		return d.delta, d.ok
	}
	c := &g.cache
	c.mu.Lock()
	defer c.mu.Unlock()
	// The snapshot is taken into the spare buffer, which becomes the
	// cached one when the state changed and stays the spare when it did
	// not: a hit allocates nothing.
	snap := g.snapshotOf(s.allocated[g], c.spare)
	n := placement.Node{CPU: cpu, Memory: memory, Free: snap[:len(g.whole)]}
	if !c.valid || c.cpu != cpu || c.memory != memory || !slices.Equal(c.snap, snap) {
		c.spare = c.snap
		c.valid, c.cpu, c.memory, c.snap = true, cpu, memory, snap
		c.base = g.base(s.workload, n, snap)
		clear(c.deltas)
	} else {
		c.spare = snap
	}
	key := cacheKey{s.request, s.mig, s.weights}
	if d, ok := c.deltas[key]; ok {
		return d.delta, d.ok
	}
	d := g.assess(s.workload, n, c.base, s.request, s.mig, snap, s.choice, s.weights, p.memo)
	if c.deltas == nil || len(c.deltas) >= maxCachedDeltas {
		c.deltas = make(map[cacheKey]scored, maxCachedDeltas)
	}
	c.deltas[key] = d
	return d.delta, d.ok
}

// assess is the fragmentation delta of the request on the node whose
// fragmentation is base, with the GPUs the allocator takes: its first fit,
// or for a MIG request with choice tessera-scheduler's placement choice
// (migPlace), from memo where it holds it.
func (g *nodeGPUs) assess(w placement.Workload, n placement.Node, base float64, r placement.Request, mig migRequest, snap []int, choice placeRule, weights uint64, memo *placeMemo) scored {
	if mig.count == 0 {
		if !n.Fits(r) {
			return scored{}
		}
		// A share or whole GPU goes on an unpartitioned GPU: the
		// partitioned capacity stays as it is.
		gpus := len(g.whole)
		after := fragmentation(w, n.With(r, n.FirstFit(r)), g.partitioned(snap[gpus:2*gpus], snap[2*gpus:]))
		return scored{delta: after - base, ok: true}
	}
	if r.CPU > n.CPU || r.Memory > n.Memory {
		return scored{}
	}
	gpus, taken, ok := memo.migPlace(g, snap, mig, choice, weights)
	if !ok {
		return scored{}
	}
	after := fragmentation(w, withMIG(n, r, gpus), g.partitioned(snap[len(g.whole):2*len(g.whole)], taken))
	return scored{delta: after - base, ok: true}
}

// base is the node's fragmentation in the snapshot's state.
func (g *nodeGPUs) base(w placement.Workload, n placement.Node, snap []int) float64 {
	gpus := len(g.whole)
	return fragmentation(w, n, g.partitioned(snap[gpus:2*gpus], snap[2*gpus:]))
}
