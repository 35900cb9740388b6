package partition

import (
	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/pkg/inventory"
)

// limit is a MIG dimension other than memory slices that can stop partitions
// from being created together: an engine the GPU has only so many of, or a
// profile's maximum number of instances.
type limit struct {
	name     string
	capacity int64
	use      func(*inventory.MIGProfile) int64
}

// candidateLimits lists every dimension NVML reports, in a fixed order.
// Engine capacities are the largest count any profile reports, which is the
// full-GPU profile's on every GPU NVIDIA ships.
func candidateLimits(profiles []inventory.MIGProfile) []limit {
	engines := []struct {
		name  string
		count func(*inventory.MIGProfile) int
	}{
		{gpuapi.CounterOFAEngines, func(p *inventory.MIGProfile) int { return p.OFAEngines }},
		{"jpeg-engines", func(p *inventory.MIGProfile) int { return p.JPEGEngines }},
		{"decoders", func(p *inventory.MIGProfile) int { return p.Decoders }},
		{"encoders", func(p *inventory.MIGProfile) int { return p.Encoders }},
	}
	var out []limit
	for _, e := range engines {
		capacity := 0
		for i := range profiles {
			capacity = max(capacity, e.count(&profiles[i]))
		}
		count := e.count
		out = append(out, limit{name: e.name, capacity: int64(capacity), use: func(p *inventory.MIGProfile) int64 { return int64(count(p)) }})
	}
	for i := range profiles {
		id := profiles[i].ID
		out = append(out, limit{
			name:     "instances-" + gpuapi.ProfileLabel(profiles[i].Name),
			capacity: int64(profiles[i].InstanceCount),
			use: func(p *inventory.MIGProfile) int64 {
				if p.ID == id {
					return 1
				}
				return 0
			},
		})
	}
	return out
}

// bindingLimits returns the dimensions that memory slices (and the limits
// already chosen) do not enforce by themselves: for each candidate, the most
// it could be used by any set of partitions that fits is computed exhaustively
// and the limit is kept only if that exceeds its capacity. The search is small
// (a few thousand partitionings of eight memory slices) and keeps counters
// that can never bind out of the slices, where each costs the scheduler time.
func bindingLimits(profiles []inventory.MIGProfile, slices int) []limit {
	placements := placementsByStart(profiles, slices)
	var chosen []limit
	for _, c := range candidateLimits(profiles) {
		if c.capacity == 0 && !anyUses(profiles, c) {
			continue
		}
		if maxUse(placements, slices, chosen, c) > c.capacity {
			chosen = append(chosen, c)
		}
	}
	return chosen
}

func anyUses(profiles []inventory.MIGProfile, l limit) bool {
	for i := range profiles {
		if l.use(&profiles[i]) > 0 {
			return true
		}
	}
	return false
}

type placed struct {
	profile   *inventory.MIGProfile
	placement inventory.Placement
}

func placementsByStart(profiles []inventory.MIGProfile, slices int) [][]placed {
	out := make([][]placed, slices)
	for i := range profiles {
		for _, pl := range profiles[i].Placements {
			if pl.Start >= 0 && pl.Start < slices && pl.End() <= slices {
				out[pl.Start] = append(out[pl.Start], placed{&profiles[i], pl})
			}
		}
	}
	return out
}

// maxUse is the largest use of target over every set of non-overlapping
// placements that respects the chosen limits.
func maxUse(byStart [][]placed, slices int, chosen []limit, target limit) int64 {
	used := make([]int64, len(chosen))
	var walk func(slice int) int64
	walk = func(slice int) int64 {
		if slice >= slices {
			return 0
		}
		best := walk(slice + 1) // leave this memory slice empty
		for _, p := range byStart[slice] {
			ok := true
			for i, l := range chosen {
				if used[i]+l.use(p.profile) > l.capacity {
					ok = false
					break
				}
			}
			if !ok {
				continue
			}
			for i, l := range chosen {
				used[i] += l.use(p.profile)
			}
			best = max(best, target.use(p.profile)+walk(p.placement.End()))
			for i, l := range chosen {
				used[i] -= l.use(p.profile)
			}
		}
		return best
	}
	return walk(0)
}
