package resourceslice

import (
	"maps"

	"github.com/tessera-gpu/tessera/pkg/partition"
)

// blocked returns the names of a GPU's devices that its prepared devices
// block: those whose counters no longer fit next to what the prepared ones
// consume. Prepared devices themselves are never blocked, and a time-shared
// GPU with prepared shares stays published for more shares.
//
// Leaving blocked devices out of the slices ("publishing only what can still
// be allocated") cuts the scheduler's cost per node several times, because
// the allocator converts, and runs CEL over, every published device of a
// node on every claim. It is safe because of the counters: a device that a
// prepared (so allocated) device blocks shares counters with it, so the
// allocator can never have allocated both; no allocated device is ever left
// out, and the allocator keeps counting every allocated device's counters.
// Devices come back as soon as what blocked them is unprepared.
func blocked(g partition.GPU, prepared map[string]bool) map[string]bool {
	remaining := maps.Clone(g.Counters)
	busy := false
	for _, d := range g.Devices {
		if !prepared[d.Name] {
			continue
		}
		busy = true
		for c, n := range d.Consumes {
			remaining[c] -= n
		}
	}
	if !busy {
		return nil
	}
	out := map[string]bool{}
	for _, d := range g.Devices {
		if prepared[d.Name] {
			continue
		}
		for c, n := range d.Consumes {
			if remaining[c] < n {
				out[d.Name] = true
				break
			}
		}
	}
	return out
}
