// Package partitiontest keeps partition.BestFit's rule as it was first
// written, looking counters up in maps: the reference the dense rule is
// tested against (pkg/partition) and the baseline its benchmarks run beside
// it (pkg/partition, research/scheduler).
package partitiontest

import (
	"math"
	"sort"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/pkg/partition"
)

// BestFitMaps is partition.BestFit as first written, over maps, with the
// stranded-slice term written over maps too: the same order of candidates,
// the same costs summed in the same order.
func BestFitMaps(devices []partition.Choice, left map[string]map[string]int64, candidates []int) []int {
	free := make([]bool, len(devices))
	perClass := map[string]int{}
	bySet := map[string][]int{}
	for i, d := range devices {
		if partition.Fits(left[d.CounterSet], d.Consumes) {
			free[i] = true
			perClass[d.Class]++
			bySet[d.CounterSet] = append(bySet[d.CounterSet], i)
		}
	}
	blocks := func(left, taken, consumes map[string]int64) bool {
		for c, n := range consumes {
			if left[c]-taken[c] < n {
				return true
			}
		}
		return false
	}
	cost := make([]float64, len(candidates))
	for k, c := range candidates {
		d := devices[c]
		if !free[c] {
			cost[k] = math.Inf(1)
			continue
		}
		set := left[d.CounterSet]
		reachedNow, reachedAfter := map[string]bool{}, map[string]bool{}
		for _, i := range bySet[d.CounterSet] {
			o := devices[i]
			for name := range o.Consumes {
				reachedNow[name] = true
			}
			if i == c {
				continue
			}
			if blocks(set, d.Consumes, o.Consumes) {
				cost[k] += 1 / float64(perClass[o.Class])
				continue
			}
			for name := range o.Consumes {
				reachedAfter[name] = true
			}
		}
		// The memory slices c strands: left after it and takeable by no
		// other device then, less those no device could take before it.
		stranded := 0
		for name, n := range set {
			if !gpuapi.IsMemorySliceCounter(name) {
				continue
			}
			if n > 0 && !reachedNow[name] {
				stranded--
			}
			if n-d.Consumes[name] > 0 && !reachedAfter[name] {
				stranded++
			}
		}
		cost[k] += partition.StrandedSliceCost * float64(stranded)
	}
	order := make([]int, len(candidates))
	for k := range order {
		order[k] = k
	}
	sort.SliceStable(order, func(x, y int) bool {
		d := cost[order[x]] - cost[order[y]]
		return !math.IsNaN(d) && d < -1e-9
	})
	out := make([]int, len(order))
	for k, o := range order {
		out[k] = candidates[o]
	}
	return out
}
