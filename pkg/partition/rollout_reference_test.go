package partition

import (
	"math"
	"math/rand/v2"
	"sort"
)

// referenceWork is the bound rolloutReference keeps: candidate groups ×
// futures × the node's devices squared.
const referenceWork = 1 << 28

// rolloutReference is Rollout as it was before its futures walked the
// counter sets' states through a table (commit 6bd3a4a): every request of
// every future scans the devices of its class. Rollout must order as it does
// wherever neither's bound is reached (TestRolloutMatchesReference).
func (l Left) rolloutReference(candidates []int, mix []float64, futures int, seed uint64) []int {
	p := l.p
	var total float64
	// byClass[k][s] are the devices of class k in set s, in order.
	byClass := make([][][]int, len(p.classes))
	for i, k := range p.class {
		if k < len(mix) && mix[k] > 0 && !math.IsInf(mix[k], 1) {
			if byClass[k] == nil {
				byClass[k] = make([][]int, len(p.sets))
			}
			byClass[k][p.set[i]] = append(byClass[k][p.set[i]], i)
		}
	}
	var drawn []int
	var cum []float64
	for k, sets := range byClass {
		if sets != nil {
			total += mix[k]
			drawn = append(drawn, k)
			cum = append(cum, total)
		}
	}
	size := make([]int64, len(p.set))
	for i := range p.set {
		for _, u := range p.uses(i) {
			if p.slice[u.counter] {
				size[i] += u.n
			}
		}
	}
	r := &referenceRoller{l: l, byClass: byClass, drawn: drawn, cum: cum, total: total, size: size,
		vals: make([]int64, len(l.vals)), slicesLeft: make([]int64, len(p.sets))}
	after := make([]int64, len(l.vals))
	afterLeft := make([]int64, len(p.sets))
	for s := range p.sets {
		for k := p.off[s]; k < p.off[s+1]; k++ {
			if p.slice[k] {
				afterLeft[s] += l.vals[k]
			}
		}
	}
	// Each free candidate's group; the groups are played once each.
	keys := make([]string, len(candidates))
	groups := map[string]bool{}
	shapes := make([]string, len(p.sets))
	member := p.members()
	for k, c := range candidates {
		if !p.blockedBy(c, l.vals) {
			keys[k] = l.group(c, member, shapes)
			groups[keys[k]] = true
		}
	}
	// A future takes at most a device per device of the node, and looks at
	// most at every device for each: bound the work, whatever a node
	// publishes, by playing fewer futures on a node too large for them, and
	// none (the candidates' order) where not even one fits the bound.
	d := int64(len(p.set))
	if d > 0 && len(groups) > 0 {
		futures = int(min(int64(futures), referenceWork/(int64(len(groups))*d*d)))
	}
	value := make([]float64, len(candidates))
	played := make(map[string]float64, len(groups))
	for k, c := range candidates {
		if keys[k] == "" {
			value[k] = -1
			continue
		}
		if v, ok := played[keys[k]]; ok || futures <= 0 {
			value[k] = v
			continue
		}
		s := p.set[c]
		copy(after, l.vals)
		if l.listed[s] {
			for _, u := range p.uses(c) {
				after[u.counter] -= u.n
			}
		}
		afterLeft[s] -= size[c]
		var v float64
		for j := range futures {
			v += float64(r.future(after, afterLeft, rand.New(rand.NewPCG(seed, uint64(j)))))
		}
		afterLeft[s] += size[c]
		played[keys[k]] = v
		value[k] = v
	}
	order := make([]int, len(candidates))
	for k := range order {
		order[k] = k
	}
	sort.SliceStable(order, func(x, y int) bool { return value[order[x]] > value[order[y]] })
	out := make([]int, len(order))
	for k, o := range order {
		out[k] = candidates[o]
	}
	return out
}

// referenceRoller plays Rollout's futures, reusing its buffers from one to the next.
type referenceRoller struct {
	l       Left
	byClass [][][]int
	drawn   []int
	cum     []float64
	total   float64
	// size is the memory slices each device takes.
	size       []int64
	vals       []int64
	slicesLeft []int64
}

// future plays one future from what is left (start, and each set's memory
// slices left) and returns the memory slices it puts in use. It takes at most
// as many devices as there are, so a device that consumes nothing cannot make
// it endless.
func (r *referenceRoller) future(start, slicesLeft []int64, rng *rand.Rand) int64 {
	if len(r.drawn) == 0 {
		return 0
	}
	p := r.l.p
	copy(r.vals, start)
	copy(r.slicesLeft, slicesLeft)
	var used int64
	for range len(p.set) {
		x := rng.Float64() * r.total
		k := r.drawn[len(r.drawn)-1]
		for n, c := range r.cum {
			if x < c {
				k = r.drawn[n]
				break
			}
		}
		best := -1
		var fewest int64 = math.MaxInt64
		for s, devices := range r.byClass[k] {
			if r.slicesLeft[s] >= fewest || !r.l.listed[s] {
				continue
			}
			for _, i := range devices {
				if r.slicesLeft[s] >= r.size[i] && !p.blockedBy(i, r.vals) {
					best, fewest = i, r.slicesLeft[s]
					break
				}
			}
		}
		if best < 0 {
			break
		}
		for _, u := range p.uses(best) {
			r.vals[u.counter] -= u.n
		}
		r.slicesLeft[p.set[best]] -= r.size[best]
		used += r.size[best]
	}
	return used
}
