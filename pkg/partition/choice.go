package partition

import (
	"math"
	"sort"
)

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
//
// It is Prepare(devices).BestFit(left, candidates): a caller that ranks the
// same devices again (another state, another request) prepares them once.
func BestFit(devices []Choice, left map[string]map[string]int64, candidates []int) []int {
	return Prepare(devices).BestFit(left, candidates)
}

// Prepared is a node's devices numbered for BestFit, so that ranking them
// works on dense vectors instead of looking each counter up in maps for
// every pair of devices: each device's counter set and class by number, and
// what it consumes by the number of the counter in its set. It is read-only
// once made, and safe to rank with at once from several goroutines.
type Prepared struct {
	sets     []string
	counters [][]string // of each set, by number
	set      []int
	class    []int
	classes  int
	// use[at[i]:at[i+1]] is what device i consumes.
	at  []int
	use []counterUse
}

type counterUse struct {
	counter int
	n       int64
}

// Prepare numbers the devices for BestFit.
func Prepare(devices []Choice) *Prepared {
	p := &Prepared{set: make([]int, len(devices)), class: make([]int, len(devices)), at: make([]int, len(devices)+1)}
	setOf := make(map[string]int, 8)
	classOf := make(map[string]int, 16)
	var numbers []map[string]int
	for i, d := range devices {
		s, ok := setOf[d.CounterSet]
		if !ok {
			s = len(p.sets)
			setOf[d.CounterSet] = s
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
		for c, n := range d.Consumes {
			k, ok := numbers[s][c]
			if !ok {
				k = len(p.counters[s])
				numbers[s][c] = k
				p.counters[s] = append(p.counters[s], c)
			}
			p.use = append(p.use, counterUse{k, n})
		}
		p.at[i+1] = len(p.use)
	}
	p.classes = len(classOf)
	return p
}

// BestFit is BestFit over the prepared devices: the same costs, summed in
// the same order, so the same order.
func (p *Prepared) BestFit(left map[string]map[string]int64, candidates []int) []int {
	// What is left of each set by counter number; a counter missing from
	// left has nothing left, as in Fits.
	sets := make([][]int64, len(p.sets))
	widest := 0
	for s, name := range p.sets {
		l := left[name]
		sets[s] = make([]int64, len(p.counters[s]))
		for k, c := range p.counters[s] {
			sets[s][k] = l[c]
		}
		widest = max(widest, len(p.counters[s]))
	}
	free := make([]bool, len(p.set))
	perClass := make([]int, p.classes)
	bySet := make([][]int, len(p.sets))
	for i, s := range p.set {
		if !p.blockedBy(i, sets[s]) {
			free[i] = true
			perClass[p.class[i]]++
			bySet[s] = append(bySet[s], i)
		}
	}
	after := make([]int64, widest)
	cost := make([]float64, len(candidates))
	for k, c := range candidates {
		if !free[c] {
			cost[k] = math.Inf(1)
			continue
		}
		// What c's set has left once c is taken.
		s := p.set[c]
		after := after[:len(sets[s])]
		copy(after, sets[s])
		for _, u := range p.use[p.at[c]:p.at[c+1]] {
			after[u.counter] -= u.n
		}
		for _, i := range bySet[s] {
			if i != c && p.blockedBy(i, after) {
				cost[k] += 1 / float64(perClass[p.class[i]])
			}
		}
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

// blockedBy reports whether device i does not fit in what is left of its
// set, by counter number.
func (p *Prepared) blockedBy(i int, left []int64) bool {
	for _, u := range p.use[p.at[i]:p.at[i+1]] {
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
