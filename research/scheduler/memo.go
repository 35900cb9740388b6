package scheduler

import (
	"maps"
	"slices"
	"strconv"
	"sync"
	"unique"
)

// maxMemoized bounds the placements one generation of the memo keeps. A
// cluster has a few node shapes and, at a time, a few requests; the states
// its nodes are in repeat (the same partitions taken on nodes that run the
// same jobs), so a few thousand cover them.
const maxMemoized = 4096

// placeMemo keeps the modelled allocator's placement of a MIG request
// across nodes: nodes of one layout (layout) in one allocated state get the
// same partitions for the same request, as migPlace reads nothing else. A
// node that missed its fragmentation cache (cache.go) looks it up before
// ranking the node's partitions again, which on 1,000 nodes with a tenth
// changed before each pod was most of a MIG pod's score
// (docs/benchmarks.md).
//
// The key is exact, not a hash: the layout's interned canonical form, the
// snapshot's blocked GPUs and allocated partitions, and the request, which
// the map compares in full. It holds two generations, bounded by count:
// when the current one is full it becomes the previous one and the one
// before is dropped, and a hit in the previous one moves to the current
// one, so what the scheduler keeps asking stays. Score runs in parallel
// over nodes; the memo's lock is held only to look up and to store, never
// while a placement is worked out (two nodes may work out the same one at
// once, and store the same value).
type placeMemo struct {
	mu            sync.Mutex
	current, prev map[memoKey]memoized
}

type memoKey struct {
	layout unique.Handle[string]
	// state is snap[gpus:] (blocked GPUs, then allocated partitions), a
	// bit each.
	state string
	r     migRequest
	// choice is whether the placement is the choice's or first fit's,
	// and weights the version of the demand's weights it weighed with.
	choice  bool
	weights uint64
}

// memoized is a placement: the partitions taken, as indexes into the
// node's mig (which nodes of one layout share), and whether the request
// fits. Read-only once stored.
type memoized struct {
	picked []int
	ok     bool
}

func newPlaceMemo() *placeMemo {
	return &placeMemo{current: make(map[memoKey]memoized)}
}

// migPlace is n.migPlace, from the memo when a node of the same layout in
// the same state had the same request; nil m works it out every time. The
// partitions taken are mapped back onto this node's own GPUs and
// partitions by their index in its mig.
func (m *placeMemo) migPlace(n *nodeGPUs, snap []int, r migRequest, choice placeRule, weights uint64) (gpus []int, taken []int, ok bool) {
	if m == nil {
		return n.migPlace(snap, r, choice)
	}
	key := memoKey{layout: n.layout(), state: packBits(snap[len(n.whole):]), r: r, choice: choice != nil, weights: weights}
	v, hit := m.get(key)
	if !hit {
		var picked []int
		gpus, taken, ok = n.migPlace(snap, r, choice)
		busy := snap[2*len(n.whole):]
		for i := range taken {
			if taken[i] == 1 && busy[i] == 0 {
				picked = append(picked, i)
			}
		}
		m.put(key, memoized{picked: picked, ok: ok})
		return gpus, taken, ok
	}
	taken = append([]int(nil), snap[2*len(n.whole):]...)
	for _, i := range v.picked {
		taken[i] = 1
		gpus = append(gpus, n.mig[i].gpu)
	}
	return gpus, taken, v.ok
}

func (m *placeMemo) get(k memoKey) (memoized, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if v, ok := m.current[k]; ok {
		return v, true
	}
	v, ok := m.prev[k]
	if ok {
		m.store(k, v)
	}
	return v, ok
}

func (m *placeMemo) put(k memoKey, v memoized) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.store(k, v)
}

// store adds to the current generation, starting a new one when it is full.
func (m *placeMemo) store(k memoKey, v memoized) {
	if len(m.current) >= maxMemoized {
		m.prev, m.current = m.current, make(map[memoKey]memoized, maxMemoized)
	}
	m.current[k] = v
}

// packBits writes a slice of 0s and 1s as a string of bits.
func packBits(bits []int) string {
	out := make([]byte, (len(bits)+7)/8)
	for i, b := range bits {
		if b != 0 {
			out[i/8] |= 1 << (i % 8)
		}
	}
	return string(out)
}

// layout is the node's devices as the MIG model reads them, without what
// names the node (device IDs, pool): the GPUs' counter sets and their
// capacities, every device's class, counter set and consumption in
// published order, and every partition's GPU, profile, placement and
// indexes. Two nodes of one layout in one state get the same placement
// from migPlace. It is a canonical, unambiguous text (each string preceded
// by its length, map keys sorted), interned so that comparing two layouts
// is comparing two handles; worked out once per node index (sliceIndex.get).
func (n *nodeGPUs) layout() unique.Handle[string] {
	n.layoutOnce.Do(func() {
		var w layoutWriter
		w.int(len(n.whole))
		for _, set := range n.sets {
			w.str(set)
		}
		w.int(len(n.counters))
		for _, set := range slices.Sorted(maps.Keys(n.counters)) {
			w.str(set)
			w.counters(n.counters[set])
		}
		w.int(len(n.choices))
		for _, c := range n.choices {
			w.str(c.CounterSet)
			w.str(c.Class)
			w.counters(c.Consumes)
		}
		w.int(len(n.mig))
		for _, m := range n.mig {
			w.str(m.profile)
			for _, v := range []int{m.gpu, m.start, m.size, m.choice, m.pos} {
				w.int(v)
			}
		}
		n.layoutKey = unique.Make(string(w.b))
	})
	return n.layoutKey
}

// layoutWriter writes layout's text: integers in decimal, each followed by
// a space; strings as their length, a colon and their bytes.
type layoutWriter struct {
	b    []byte
	keys []string
}

func (w *layoutWriter) int(v int) {
	w.b = append(strconv.AppendInt(w.b, int64(v), 10), ' ')
}

func (w *layoutWriter) str(s string) {
	w.b = append(append(strconv.AppendInt(w.b, int64(len(s)), 10), ':'), s...)
}

// counters writes a map of counters: its size, then each name and value,
// sorted by name.
func (w *layoutWriter) counters(counters map[string]int64) {
	w.keys = w.keys[:0]
	for c := range counters {
		w.keys = append(w.keys, c)
	}
	slices.Sort(w.keys)
	w.int(len(w.keys))
	for _, c := range w.keys {
		w.str(c)
		w.int(int(counters[c]))
	}
}
