package scheduler

import (
	"math/bits"
	"regexp"
	"slices"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/dynamic-resource-allocation/structured"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/pkg/partition"
	"github.com/tessera-gpu/tessera/pkg/placement"
)

// migRequest is what a MIG claim asks for: count partitions of one
// profile, of any profile when profile is empty.
type migRequest struct {
	profile string
	count   int
}

// profileSelector matches the selector the shipped examples and the
// NVIDIA-compatible attribute names lead users to write:
// device.attributes["gpu.tessera.dev"].profile == "1g.18gb".
var profileSelector = regexp.MustCompile(`^\s*device\.attributes\["` + regexp.QuoteMeta(gpuapi.DriverName) + `"\]\.profile\s*==\s*"([^"]+)"\s*$`)

// selectedProfile returns the one profile the selectors ask for, "" for
// none; known is false when a selector is one the plugin cannot read, so
// that it does not score a claim it would model wrong.
func selectedProfile(selectors []resourceapi.DeviceSelector) (profile string, known bool) {
	for _, s := range selectors {
		if s.CEL == nil {
			return "", false
		}
		m := profileSelector.FindStringSubmatch(s.CEL.Expression)
		if m == nil || profile != "" && profile != m[1] {
			return "", false
		}
		profile = m[1]
	}
	return profile, true
}

// migOf reads a MIG partition's profile and placement from its attributes.
func migOf(d resourceapi.Device, gpu int, id structured.DeviceID) (migDevice, bool) {
	profile, start, size := d.Attributes[gpuapi.AttrProfile], d.Attributes[gpuapi.AttrPlacementStart], d.Attributes[gpuapi.AttrPlacementSize]
	if profile.StringValue == nil || start.IntValue == nil || size.IntValue == nil {
		return migDevice{}, false
	}
	return migDevice{id: id, gpu: gpu, profile: *profile.StringValue, start: int(*start.IntValue), size: int(*size.IntValue)}, true
}

// migPlace returns the GPUs the allocator puts the MIG request on, given a
// snapshot of the node (see snapshot), and the partitions then allocated
// (taken, indexed as n.mig, the snapshot's allocated ones included); ok is
// false when the request does not fit. It reads the node's counters as the
// allocator does: what each counter set has left once the allocated
// partitions took theirs, nothing on a GPU that holds a whole-GPU or share
// allocation (those devices consume every counter), and a partition fits
// while what it consumes is left.
//
// With a choice rule (bestFit), a request of one partition goes where
// tessera-scheduler's placement choice puts it (MIGPlacementOrder: the free
// selectable partitions ranked by partition.BestFit over the node's
// devices, the first that fits taken); otherwise (nil), and for requests of
// several partitions (which the choice leaves to the allocator), the
// allocator's first fit: in published order, each partition that fits with
// those taken before it.
// Free partitions that do not fit come last in BestFit's ranking, so
// ranking only those that fit takes the same one.
func (n *nodeGPUs) migPlace(snap []int, r migRequest, choice placeRule) (gpus []int, taken []int, ok bool) {
	busy := snap[2*len(n.whole):]
	taken = append([]int(nil), busy...)
	left := n.countersLeft(snap)
	fits := func(m migDevice) bool { return left.Fits(m.choice) }
	if choice != nil && r.count == 1 {
		// A partition of a GPU of the same shape and state as one of a
		// GPU before it costs the same, and BestFit keeps the earlier of
		// equals: it is left out, which keeps the ranking short on a
		// node of many idle GPUs.
		blocked := snap[len(n.whole) : 2*len(n.whole)]
		state := make([]uint64, len(n.whole))
		for i, m := range n.mig {
			if busy[i] == 1 {
				state[m.gpu] |= 1 << m.pos
			}
		}
		type twin struct {
			shape, blocked, pos int
			busy                uint64
		}
		// Few: at most a GPU shape's partitions of the profile.
		var seen []twin
		shapes := n.gpuShapes()
		var candidates []int
		for i, m := range n.mig {
			if r.profile != "" && m.profile != r.profile || busy[i] == 1 || !fits(m) {
				continue
			}
			if shape := shapes[m.gpu]; shape >= 0 {
				k := twin{shape, blocked[m.gpu], m.pos, state[m.gpu]}
				if slices.Contains(seen, k) {
					continue
				}
				seen = append(seen, k)
			}
			candidates = append(candidates, m.choice)
		}
		if len(candidates) == 0 {
			return nil, taken, false
		}
		best := choice(n, snap, left, candidates)
		for i, m := range n.mig {
			if m.choice == best {
				taken[i] = 1
				return []int{m.gpu}, taken, true
			}
		}
	}
	for i, m := range n.mig {
		if len(gpus) == r.count {
			break
		}
		if r.profile != "" && m.profile != r.profile || taken[i] == 1 || !fits(m) {
			continue
		}
		taken[i] = 1
		gpus = append(gpus, m.gpu)
		left.Take(m.choice)
	}
	return gpus, taken, len(gpus) == r.count
}

// placeRule is the choice's pick among a node's candidate partitions
// (indexes into its choices) in the snapshot's state, given what is left of
// its counter sets (countersLeft).
type placeRule func(n *nodeGPUs, snap []int, left partition.Left, candidates []int) int

// bestFit is MIGPlacementOrder's rule: the first of partition.BestFit's
// ranking, over the node's devices as prepared once for their layout.
func bestFit(_ *nodeGPUs, _ []int, left partition.Left, candidates []int) int {
	return left.BestFit(candidates)[0]
}

// weightedBestFit is MIGPlacementOrderFor's rule with the demand's weights.
func weightedBestFit(w *DemandWeights) placeRule {
	return func(n *nodeGPUs, _ []int, left partition.Left, candidates []int) int {
		return left.BestFitWeighted(candidates, n.prepared.Weigh(w.Weight))[0]
	}
}

// countersLeft is what is left of each of the node's counter sets in the
// snapshot's state, numbered as its prepared devices: a fresh copy the
// caller may change.
func (n *nodeGPUs) countersLeft(snap []int) partition.Left {
	blocked, busy := snap[len(n.whole):2*len(n.whole)], snap[2*len(n.whole):]
	left := n.capacityLeft().Clone()
	for g, set := range n.sets {
		if blocked[g] == 1 {
			left.Empty(set)
		}
	}
	for i, m := range n.mig {
		if busy[i] == 1 {
			left.Take(m.choice)
		}
	}
	return left
}

// partitioned is the free capacity of the GPUs cut into MIG partitions, in
// milli-GPUs by their free memory slices, given the blocked GPUs and the
// allocated partitions of a snapshot. The workload the plugin measures
// fragmentation against has no MIG requests, so for every class of it
// this capacity is free but unusable: each of the two measures of
// placement.Workload.Fragmentation would count all of it (it adds to the
// free total and no class can take any of it), which is what
// fragmentation adds (see withPartitioned).
func (n *nodeGPUs) partitioned(blocked, busy []int) int64 {
	var used []uint64
	for i, m := range n.mig {
		if busy[i] == 0 || blocked[m.gpu] == 1 {
			continue
		}
		for len(used) <= m.gpu {
			used = append(used, 0)
		}
		used[m.gpu] |= (1<<m.size - 1) << m.start
	}
	var out int64
	for g, u := range used {
		if u != 0 && n.memorySlices[g] > 0 {
			out += int64(placement.WholeGPU * (n.memorySlices[g] - bits.OnesCount64(u)) / n.memorySlices[g])
		}
	}
	return out
}

// fragmentation is the workload's fragmentation of the node plus that of
// the free capacity of its partitioned GPUs, which the node's Free (0 for
// such a GPU) does not show: once for each of the two measures summed.
func fragmentation(w placement.Workload, n placement.Node, partitioned int64) float64 {
	return w.Fragmentation(n) + 2*float64(partitioned)
}

// withMIG is the node after MIG partitions were put on the given GPUs: a
// GPU with a partition is no longer free for shares or whole GPUs, which is
// what the fragmentation measure counts.
func withMIG(n placement.Node, r placement.Request, gpus []int) placement.Node {
	out := placement.Node{CPU: n.CPU - r.CPU, Memory: n.Memory - r.Memory, Free: append([]int(nil), n.Free...), Model: n.Model}
	for _, g := range gpus {
		out.Free[g] = 0
	}
	return out
}
