package partition

import (
	"maps"
	"math"
	"slices"
	"sort"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
)

// StrandedSliceCost is what BestFit charges a placement for each memory slice
// of its GPU that it strands: a slice left free that no device of the GPU
// can take once the placement is made (an H200's slice 7 once a 1g partition
// takes slice 6: only the 1g.35gb partition at 6 and the full partition use
// it). Such a slice is lost to the node as surely as a partition it cannot
// hold any more. The value, as much as blocking one of ten free placements of
// a profile, was chosen on 2,000 random sequences that are not the packing
// benchmark's (docs/benchmarks.md): 0.05 to 0.3 all gain, 0.1 most.
const StrandedSliceCost = 0.1

// Choice is one device of a node as the placement choice sees it: the counter
// set it draws on, what it takes of it, and its class. Devices of one class
// are interchangeable to a request (one MIG profile, the whole GPU, the
// time-shared GPU).
type Choice struct {
	CounterSet string
	Class      string
	Consumes   map[string]int64
}

// BestFit orders the candidates (indexes into devices, the devices a request
// could take) by what taking each costs the node's other free devices,
// cheapest first; equal costs keep the candidates' order, so a caller that
// passes them in published order falls back to the static packing order.
// left is what is left of each counter set. It only orders: a candidate that
// does not fit stays in the result (last among equals, as it blocks nothing),
// and the caller still checks every device it takes.
//
// Taking a device costs each other device of its counter set that fits now
// and would not fit after it 1/(the number of devices of that device's class
// that fit now on the node): blocking the last free placement of a profile
// costs a whole point, blocking one of fourteen free 1g placements 1/14. It is
// the static order's measure (packingOrder) taken on the node's free devices
// instead of an empty GPU's, so it keeps what is scarce on the node now
// placeable, and it prefers a GPU already cut to an empty one (an empty GPU's
// whole and shared devices and its full-size partition are blocked too).
// Each memory slice of the set that taking the device strands (left, but
// takeable by none of the set's devices any more) costs StrandedSliceCost
// more.
//
// It is Prepare(devices).BestFit(left, candidates): a caller that ranks the
// same devices again (another state, another request) prepares them once.
func BestFit(devices []Choice, left map[string]map[string]int64, candidates []int) []int {
	return Prepare(devices).BestFit(left, candidates)
}

// Prepared is a node's devices numbered for BestFit, so that ranking them
// works on dense vectors instead of looking each counter up in maps for
// every pair of devices: each device's counter set and class by number, and
// what it consumes by the number of the counter (numbered across the sets,
// each set's counters together). It is read-only once made, and safe to
// use from several goroutines at once.
type Prepared struct {
	sets     []string
	setOf    map[string]int
	counters [][]string // of each set, in number order
	// off[s] is the number of set s's first counter; off[len(sets)] is
	// the number of counters.
	off     []int
	set     []int
	class   []int
	classes []string // by class number
	// use[at[i]:at[i+1]] is what device i consumes.
	at  []int
	use []counterUse
	// slice is whether each counter (by number) is a MIG memory slice.
	slice []bool
}

type counterUse struct {
	counter int
	n       int64
}

// Prepare numbers the devices for BestFit.
func Prepare(devices []Choice) *Prepared {
	p := &Prepared{setOf: make(map[string]int, 8), set: make([]int, len(devices)), class: make([]int, len(devices)), at: make([]int, len(devices)+1)}
	classOf := make(map[string]int, 16)
	var numbers []map[string]int
	for i, d := range devices {
		s, ok := p.setOf[d.CounterSet]
		if !ok {
			s = len(p.sets)
			p.setOf[d.CounterSet] = s
			p.sets = append(p.sets, d.CounterSet)
			p.counters = append(p.counters, nil)
			numbers = append(numbers, map[string]int{})
		}
		p.set[i] = s
		k, ok := classOf[d.Class]
		if !ok {
			k = len(classOf)
			classOf[d.Class] = k
		}
		p.class[i] = k
		// In name order, so that sets of the same devices number their
		// counters alike whatever the maps' order (Rollout's groups).
		for _, c := range slices.Sorted(maps.Keys(d.Consumes)) {
			n := d.Consumes[c]
			k, ok := numbers[s][c]
			if !ok {
				k = len(p.counters[s])
				numbers[s][c] = k
				p.counters[s] = append(p.counters[s], c)
			}
			// Numbered within the set for now, across the sets below.
			p.use = append(p.use, counterUse{k, n})
		}
		p.at[i+1] = len(p.use)
	}
	p.classes = make([]string, len(classOf))
	for name, k := range classOf {
		p.classes[k] = name
	}
	p.off = make([]int, len(p.sets)+1)
	for s := range p.sets {
		p.off[s+1] = p.off[s] + len(p.counters[s])
	}
	for i, s := range p.set {
		for k := p.at[i]; k < p.at[i+1]; k++ {
			p.use[k].counter += p.off[s]
		}
	}
	p.slice = make([]bool, p.off[len(p.sets)])
	for s, names := range p.counters {
		for k, c := range names {
			p.slice[p.off[s]+k] = gpuapi.IsMemorySliceCounter(c)
		}
	}
	return p
}

// Left is what is left of the counter sets of prepared devices, by counter
// number; a Left and its clones are changed only by their holder.
type Left struct {
	p    *Prepared
	vals []int64
	// listed is whether each set was in the map the Left was made from.
	listed []bool
}

// Left numbers what is left of each counter set; a counter left does not
// list has nothing left, as in Fits.
func (p *Prepared) Left(left map[string]map[string]int64) Left {
	l := Left{p: p, vals: make([]int64, p.off[len(p.sets)]), listed: make([]bool, len(p.sets))}
	for s, name := range p.sets {
		m, ok := left[name]
		l.listed[s] = ok
		for k, c := range p.counters[s] {
			l.vals[p.off[s]+k] = m[c]
		}
	}
	return l
}

// Clone returns a copy that changes apart from l.
func (l Left) Clone() Left {
	return Left{p: l.p, vals: slices.Clone(l.vals), listed: l.listed}
}

// Fits reports whether device i fits in what is left: Fits for the device.
func (l Left) Fits(i int) bool { return !l.p.blockedBy(i, l.vals) }

// Take takes what device i consumes from its counter set, when the set was
// listed.
func (l Left) Take(i int) {
	if !l.listed[l.p.set[i]] {
		return
	}
	for _, u := range l.p.uses(i) {
		l.vals[u.counter] -= u.n
	}
}

// Empty leaves nothing of the named counter set.
func (l Left) Empty(set string) {
	if s, ok := l.p.setOf[set]; ok {
		clear(l.vals[l.p.off[s]:l.p.off[s+1]])
	}
}

// BestFit is BestFit over the prepared devices: the same costs, summed in
// the same order, so the same order.
func (p *Prepared) BestFit(left map[string]map[string]int64, candidates []int) []int {
	return p.Left(left).BestFit(candidates)
}

// Weigh numbers the classes' weights for BestFitWeighted: weight(class) for
// each class of the prepared devices, by its number.
func (p *Prepared) Weigh(weight func(class string) float64) []float64 {
	out := make([]float64, len(p.classes))
	for k, name := range p.classes {
		out[k] = weight(name)
	}
	return out
}

// BestFit is BestFit over the prepared devices with what is left.
func (l Left) BestFit(candidates []int) []int { return l.BestFitWeighted(candidates, nil) }

// BestFitWeighted is BestFit with each class's blocked devices charged its
// weight (weights by class number, from Prepared.Weigh) instead of 1:
// blocking the last free placement of a class of weight w costs w. A
// scheduler that weighs each class by how much of the demand asks for it
// (Demand) stops keeping empty GPUs whole for whole-GPU or shared claims
// nobody makes, which is most of what BestFit's measure charges for cutting
// an empty GPU (docs/benchmarks.md, Packing). nil weighs every class 1,
// which is BestFit.
func (l Left) BestFitWeighted(candidates []int, weights []float64) []int {
	p := l.p
	weight := func(k int) float64 {
		if weights == nil {
			return 1
		}
		return weights[k]
	}
	free := make([]bool, len(p.set))
	perClass := make([]int, len(p.classes))
	// The free devices of each set s, in order, are
	// bySet[start[s]:start[s+1]]: one allocation, not one per set.
	start := make([]int, len(p.sets)+1)
	for i, s := range p.set {
		if !p.blockedBy(i, l.vals) {
			free[i] = true
			perClass[p.class[i]]++
			start[s+1]++
		}
	}
	for s := range p.sets {
		start[s+1] += start[s]
	}
	bySet := make([]int, start[len(p.sets)])
	next := slices.Clone(start[:len(p.sets)])
	for i, s := range p.set {
		if free[i] {
			bySet[next[s]] = i
			next[s]++
		}
	}
	after := make([]int64, len(l.vals))
	// reached marks the counters that some free device consumes.
	reached := make([]bool, len(l.vals))
	// strandedNow[s] is set s's memory slices stranded before any
	// candidate is taken, -1 until counted.
	strandedNow := make([]int, len(p.sets))
	for s := range strandedNow {
		strandedNow[s] = -1
	}
	cost := make([]float64, len(candidates))
	for k, c := range candidates {
		if !free[c] {
			cost[k] = math.Inf(1)
			continue
		}
		s := p.set[c]
		others := bySet[start[s]:start[s+1]]
		if strandedNow[s] < 0 {
			clear(reached[p.off[s]:p.off[s+1]])
			for _, i := range others {
				p.reach(i, reached)
			}
			strandedNow[s] = p.stranded(s, l.vals, reached)
		}
		// What c's set has left once c is taken.
		copy(after[p.off[s]:p.off[s+1]], l.vals[p.off[s]:p.off[s+1]])
		for _, u := range p.uses(c) {
			after[u.counter] -= u.n
		}
		clear(reached[p.off[s]:p.off[s+1]])
		for _, i := range others {
			switch {
			case i == c:
			case p.blockedBy(i, after):
				cost[k] += weight(p.class[i]) / float64(perClass[p.class[i]])
			default:
				p.reach(i, reached)
			}
		}
		cost[k] += StrandedSliceCost * float64(p.stranded(s, after, reached)-strandedNow[s])
	}
	order := make([]int, len(candidates))
	for k := range order {
		order[k] = k
	}
	sort.SliceStable(order, func(x, y int) bool {
		// Costs are sums of fractions: compare with a tolerance so that
		// equal costs summed in another order still tie.
		d := cost[order[x]] - cost[order[y]]
		return !math.IsNaN(d) && d < -1e-9
	})
	out := make([]int, len(order))
	for k, o := range order {
		out[k] = candidates[o]
	}
	return out
}

// reach marks the counters device i consumes.
func (p *Prepared) reach(i int, reached []bool) {
	for _, u := range p.uses(i) {
		reached[u.counter] = true
	}
}

// stranded counts set s's memory slices that are left but that no device
// reaches (reach): capacity no request can take any more.
func (p *Prepared) stranded(s int, left []int64, reached []bool) int {
	n := 0
	for k := p.off[s]; k < p.off[s+1]; k++ {
		if p.slice[k] && left[k] > 0 && !reached[k] {
			n++
		}
	}
	return n
}

func (p *Prepared) uses(i int) []counterUse { return p.use[p.at[i]:p.at[i+1]] }

// blockedBy reports whether device i does not fit in what is left, by
// counter number.
func (p *Prepared) blockedBy(i int, left []int64) bool {
	for _, u := range p.uses(i) {
		if left[u.counter] < u.n {
			return true
		}
	}
	return false
}

// Fits reports whether what is left of a counter set covers what a device
// consumes.
func Fits(left, consumes map[string]int64) bool {
	for c, n := range consumes {
		if left[c] < n {
			return false
		}
	}
	return true
}
