package partition

import (
	"math"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"
)

// Rollout orders the candidates by playing what each leaves: for each free
// candidate it plays futures random futures from the state taking it leaves,
// and ranks the candidates by the memory slices their futures put in use,
// most first. A future draws requests of one device from mix (a weight per
// class number, as Prepared.Weigh numbers them; a class of weight 0 is never
// drawn) and places each on the fullest counter set (fewest memory slices
// left) where a device of its class fits (the first such set in the order the
// devices name them), on its first such device in the devices' order, until a
// request fits nowhere. That is one step of policy improvement over "fullest
// first": the docs' packing benchmark measures it against BestFit
// (docs/benchmarks.md, Packing).
//
// Every candidate's futures are drawn from the same seeds, seed and the
// future's number (common random numbers), so candidates are compared on the
// same requests and the order is a function of the state, the mix and seed.
// Candidates on counter sets of the same devices in the same state, at the
// same place among them, leave the node in states that differ only in which
// set is which, so each such group is played once and its candidates tie.
// A candidate that does not fit goes last; equal values keep the candidates'
// order. It only orders, as BestFit does: the caller still checks each
// device it takes.
//
// It costs futures × the candidates' groups × a future's requests, each a
// look at the devices of the class drawn: about 3 ms for a 1g partition with
// 256 futures on an empty node of eight H200s, 0.6 ms on one half full
// (BenchmarkRollout). A scheduler runs it where one node's choice is made,
// not for every node it filters. The work is bounded (rolloutWork) whatever
// devices a node publishes.
func (l Left) Rollout(candidates []int, mix []float64, futures int, seed uint64) []int {
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
	r := &roller{l: l, byClass: byClass, drawn: drawn, cum: cum, total: total, size: size,
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
	for k, c := range candidates {
		if !p.blockedBy(c, l.vals) {
			keys[k] = l.group(c, shapes)
			groups[keys[k]] = true
		}
	}
	// A future takes at most a device per device of the node, and looks at
	// most at every device for each: bound the work, whatever a node
	// publishes, by playing fewer futures on a node too large for them, and
	// none (the candidates' order) where not even one fits the bound.
	d := int64(len(p.set))
	if d > 0 && len(groups) > 0 {
		futures = int(min(int64(futures), rolloutWork/(int64(len(groups))*d*d)))
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

// group names candidate c's group for Rollout: its set's devices (their
// classes and what they consume), what the set has left, and c's place
// among the set's devices. shapes keeps each set's devices' part.
func (l Left) group(c int, shapes []string) string {
	p := l.p
	s := p.set[c]
	var b strings.Builder
	if shapes[s] == "" {
		for i, si := range p.set {
			if si != s {
				continue
			}
			b.WriteString(strconv.Itoa(p.class[i]))
			for _, u := range p.uses(i) {
				b.WriteByte(',')
				b.WriteString(strconv.Itoa(u.counter - p.off[s]))
				b.WriteByte(':')
				b.WriteString(strconv.FormatInt(u.n, 10))
			}
			b.WriteByte(';')
		}
		shapes[s] = b.String()
		b.Reset()
	}
	b.WriteString(shapes[s])
	b.WriteString(strconv.FormatBool(l.listed[s]))
	for _, v := range l.vals[p.off[s]:p.off[s+1]] {
		b.WriteByte('|')
		b.WriteString(strconv.FormatInt(v, 10))
	}
	place := 0
	for i := range c {
		if p.set[i] == s {
			place++
		}
	}
	b.WriteByte('@')
	b.WriteString(strconv.Itoa(place))
	return b.String()
}

// rolloutWork bounds Rollout's work: candidate groups × futures × the node's
// devices squared. An empty node of eight H200s (216 devices, 7 groups of
// 1g.18gb placements) takes 84 million of it with 256 futures, in about 3
// ms; a node that publishes many more devices plays fewer futures.
const rolloutWork = 1 << 28

// roller plays Rollout's futures, reusing its buffers from one to the next.
type roller struct {
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
func (r *roller) future(start, slicesLeft []int64, rng *rand.Rand) int64 {
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
