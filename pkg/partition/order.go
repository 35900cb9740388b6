package partition

import (
	"math"
	"sort"

	"github.com/tessera-gpu/tessera/pkg/inventory"
)

// packingOrder is the order in which MIG devices are published, and so the
// order in which the scheduler's first-fit allocator tries them.
//
// A static order cannot know what will be asked for next, so it keeps the
// partitions that are hardest to place placeable for as long as it can: each
// placement is scored by how much it blocks the other profiles, counting each
// overlapped placement of another profile as 1/(that profile's number of
// placements). Blocking the only 4g or 7g placement costs a whole point;
// blocking one of seven 1g placements costs 1/7. Placements are tried cheapest
// first, ties going to the higher start. On an H100 or H200 this puts 1g
// partitions on memory slices 6, 5, 4 before 3-0 (keeping the 4g placement at
// 0 free), 2g at 4 before 2 and 0, and 3g at 4 before 0.
func packingOrder(profiles []inventory.MIGProfile) []placed {
	var all []placed
	for i := range profiles {
		for _, pl := range profiles[i].Placements {
			all = append(all, placed{&profiles[i], pl})
		}
	}
	cost := make([]float64, len(all))
	for i, a := range all {
		for _, b := range all {
			if b.profile.ID != a.profile.ID && a.placement.Overlaps(b.placement) {
				cost[i] += 1 / float64(len(b.profile.Placements))
			}
		}
	}
	idx := make([]int, len(all))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(x, y int) bool {
		a, b := all[idx[x]], all[idx[y]]
		if a.profile.ID != b.profile.ID {
			return a.profile.ID < b.profile.ID
		}
		// Costs are sums of fractions: compare with a tolerance so that
		// equal costs summed in another order still tie.
		if d := cost[idx[x]] - cost[idx[y]]; math.Abs(d) > 1e-9 {
			return d < 0
		}
		return a.placement.Start > b.placement.Start
	})
	out := make([]placed, len(idx))
	for i, j := range idx {
		out[i] = all[j]
	}
	return out
}
