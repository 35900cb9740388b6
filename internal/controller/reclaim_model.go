package controller

import (
	"cmp"
	"slices"
	"strconv"
	"strings"
	"sync"

	resourceapi "k8s.io/api/resource/v1"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
)

// deviceModels remembers the full device model of every node: each GPU's
// devices as the node publishes them with nothing prepared. A plugin that
// withdraws blocked devices (the default) publishes, for a GPU in use, only
// what can still be allocated next to its prepared devices: a GPU held
// whole publishes no partitions. Reclaim must ask what the node offers once
// its victims are gone, which is what it published before they came; so
// the model keeps, per GPU, the largest device list the GPU has published
// (every withdrawn list is a part of the full one, and a GPU with nothing
// prepared publishes the full one), with each device as last published.
//
// The model is what the allocator needs, no more: withdrawal never changes
// the allocator's choice (what it leaves out, the counters already refuse,
// and it keeps the order of the rest), so the full model with the
// allocations left after the victims is exactly what the node will offer.
//
// What it cannot know is the devices a GPU withdrew before this process
// first saw its slices (the controller started while the GPU was in use):
// such a GPU is modelled with what it publishes, which only ever makes
// reclaim see less room than there is (it evicts nothing for room it
// cannot prove), never more.
type deviceModels struct {
	mu sync.Mutex
	// gpus holds, per pool and GPU (its counter set), the devices of the
	// full model in publication order.
	gpus map[string]map[string][]resourceapi.Device
}

func newDeviceModels() *deviceModels {
	return &deviceModels{gpus: map[string]map[string][]resourceapi.Device{}}
}

// node returns the full model of one node's pool of Tessera devices, built
// from what the pool publishes now (published, every slice of the pool):
// the counter slices as published, then one slice per GPU with its full
// device list. Slices of a layout that packs several GPUs into one slice
// (a plugin that withdraws nothing) are full already and kept as they are.
// The result is the caller's.
func (m *deviceModels) node(pool string, published []*resourceapi.ResourceSlice) []*resourceapi.ResourceSlice {
	m.mu.Lock()
	defer m.mu.Unlock()
	generation := int64(0)
	for _, s := range published {
		generation = max(generation, s.Spec.Pool.Generation)
	}
	var counters, packed []*resourceapi.ResourceSlice
	current := map[string][]resourceapi.Device{}
	var node *string
	for _, s := range published {
		if s.Spec.Pool.Generation != generation {
			continue
		}
		node = s.Spec.NodeName
		if len(s.Spec.SharedCounters) > 0 {
			counters = append(counters, s)
		}
		if set, ok := oneCounterSet(s.Spec.Devices); ok {
			current[set] = append(current[set], s.Spec.Devices...)
		} else if len(s.Spec.Devices) > 0 {
			packed = append(packed, s)
		}
	}
	known := m.gpus[pool]
	if known == nil {
		known = map[string][]resourceapi.Device{}
		m.gpus[pool] = known
	}
	for set, devices := range current {
		full := known[set]
		byName := map[string]resourceapi.Device{}
		for _, d := range devices {
			byName[d.Name] = d
		}
		if len(byName) > len(full) || !containsAll(full, byName) {
			// A GPU that publishes a device the model lacks changed its
			// layout (a new plugin configuration): start from what it
			// publishes.
			full = slices.Clone(devices)
		} else {
			full = slices.Clone(full)
			for i, d := range full {
				if p, ok := byName[d.Name]; ok {
					full[i] = p
				}
			}
		}
		known[set] = full
	}
	for set := range known {
		if _, ok := current[set]; !ok {
			delete(known, set)
		}
	}

	sets := make([]string, 0, len(known))
	for set := range known {
		sets = append(sets, set)
	}
	slices.SortFunc(sets, compareGPUNames)
	slices.SortFunc(counters, func(a, b *resourceapi.ResourceSlice) int { return cmp.Compare(a.Name, b.Name) })
	slices.SortFunc(packed, func(a, b *resourceapi.ResourceSlice) int { return cmp.Compare(a.Name, b.Name) })
	count := int64(len(counters) + len(packed) + len(sets))
	var out []*resourceapi.ResourceSlice
	add := func(name string, spec resourceapi.ResourceSliceSpec) {
		spec.Pool = resourceapi.ResourcePool{Name: pool, Generation: generation, ResourceSliceCount: count}
		s := &resourceapi.ResourceSlice{Spec: spec}
		s.Name = name
		out = append(out, s)
	}
	for _, s := range counters {
		add(s.Name, resourceapi.ResourceSliceSpec{Driver: gpuapi.DriverName, NodeName: node, SharedCounters: s.Spec.SharedCounters})
	}
	for _, s := range packed {
		add(s.Name, resourceapi.ResourceSliceSpec{Driver: gpuapi.DriverName, NodeName: node, Devices: s.Spec.Devices})
	}
	for _, set := range sets {
		add(pool+"-model-"+set, resourceapi.ResourceSliceSpec{Driver: gpuapi.DriverName, NodeName: node, Devices: slices.Clone(known[set])})
	}
	return out
}

// forget drops the models of pools that no longer publish.
func (m *deviceModels) forget(published map[string][]*resourceapi.ResourceSlice) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for pool := range m.gpus {
		if _, ok := published[pool]; !ok {
			delete(m.gpus, pool)
		}
	}
}

// oneCounterSet returns the one counter set all devices draw on, if they
// draw on exactly one: the per-GPU slices of withdrawal.
func oneCounterSet(devices []resourceapi.Device) (string, bool) {
	set := ""
	for _, d := range devices {
		for _, c := range d.ConsumesCounters {
			switch {
			case set == "":
				set = c.CounterSet
			case set != c.CounterSet:
				return "", false
			}
		}
		if len(d.ConsumesCounters) == 0 {
			return "", false
		}
	}
	return set, set != ""
}

func containsAll(full []resourceapi.Device, byName map[string]resourceapi.Device) bool {
	have := map[string]bool{}
	for _, d := range full {
		have[d.Name] = true
	}
	for name := range byName {
		if !have[name] {
			return false
		}
	}
	return true
}

// compareGPUNames orders "gpu-2" before "gpu-10".
func compareGPUNames(a, b string) int {
	na, errA := strconv.Atoi(strings.TrimPrefix(a, "gpu-"))
	nb, errB := strconv.Atoi(strings.TrimPrefix(b, "gpu-"))
	if errA == nil && errB == nil {
		return cmp.Compare(na, nb)
	}
	return strings.Compare(a, b)
}
