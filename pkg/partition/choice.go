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
func BestFit(devices []Choice, left map[string]map[string]int64, candidates []int) []int {
	free := make([]bool, len(devices))
	perClass := map[string]int{}
	bySet := map[string][]int{}
	for i, d := range devices {
		if Fits(left[d.CounterSet], d.Consumes) {
			free[i] = true
			perClass[d.Class]++
			bySet[d.CounterSet] = append(bySet[d.CounterSet], i)
		}
	}
	cost := make([]float64, len(candidates))
	for k, c := range candidates {
		d := devices[c]
		if !free[c] {
			cost[k] = math.Inf(1)
			continue
		}
		set := left[d.CounterSet]
		for _, i := range bySet[d.CounterSet] {
			if o := devices[i]; i != c && blocks(set, d.Consumes, o.Consumes) {
				cost[k] += 1 / float64(perClass[o.Class])
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

// blocks reports whether a device that fits in left no longer fits once
// taken is taken from it.
func blocks(left, taken, consumes map[string]int64) bool {
	for c, n := range consumes {
		if left[c]-taken[c] < n {
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
