package scheduler

import (
	"math/bits"
	"regexp"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/dynamic-resource-allocation/structured"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
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

// migFirstFit returns the GPUs the allocator's first fit puts the MIG
// request on, given a snapshot of the node (see snapshot): it takes, in the
// published order, the first partitions of the profile whose GPU holds no
// whole-GPU or share allocation and whose memory slices no allocated or
// already taken partition of that GPU overlaps. It models the memory
// slices only; where another counter (e.g. the one media-engine set) makes
// the allocator refuse a partition it would take, the scored GPU can
// differ. ok is false when the request does not fit.
func (n *nodeGPUs) migFirstFit(snap []int, r migRequest) (gpus []int, taken []int, ok bool) {
	blocked, busy := snap[len(n.whole):2*len(n.whole)], snap[2*len(n.whole):]
	taken = append([]int(nil), busy...)
	for i, m := range n.mig {
		if len(gpus) == r.count {
			break
		}
		if r.profile != "" && m.profile != r.profile || blocked[m.gpu] == 1 || taken[i] == 1 {
			continue
		}
		free := true
		for j, o := range n.mig {
			if taken[j] == 1 && o.gpu == m.gpu && m.start < o.start+o.size && o.start < m.start+m.size {
				free = false
				break
			}
		}
		if free {
			taken[i] = 1
			gpus = append(gpus, m.gpu)
		}
	}
	return gpus, taken, len(gpus) == r.count
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
