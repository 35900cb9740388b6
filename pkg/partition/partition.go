// Package partition turns one GPU of the inventory into the devices Tessera
// publishes for it and the shared counters that keep them consistent: the
// whole GPU, a time-shared GPU, and every MIG partition the GPU can be cut
// into. It is pure: the same GPU always gives the same devices in the same
// order.
//
// All devices of GPU N draw on one counter set, gpu-N. Each MIG memory slice
// is a counter of value 1 that the partitions placed on it consume; the whole
// GPU and the shared GPU consume every counter. So the scheduler can only
// allocate a GPU whole, or as non-overlapping partitions, or as shares, never
// two of these at once. Where NVML reports engines or instance limits that the
// memory slices alone do not enforce (a GPU's single optical-flow engine, which
// each "+me" partition and the full partition take), an extra counter carries
// that limit; counters that can never bind are left out.
package partition

import (
	"maps"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/pkg/inventory"
)

// Kind is the form in which a device offers a GPU.
type Kind string

const (
	// KindGPU is a whole GPU, allocated exclusively.
	KindGPU Kind = gpuapi.TypeGPU
	// KindMIG is one MIG partition at one placement, allocated exclusively.
	KindMIG Kind = gpuapi.TypeMIG
	// KindShared is a time-shared GPU handed out in memory and compute shares.
	KindShared Kind = gpuapi.TypeShared
)

// Options are per-node choices an admin makes.
type Options struct {
	// DisableMIG stops MIG partitions from being offered.
	DisableMIG bool
	// DisableSharing stops the time-shared GPU from being offered.
	DisableSharing bool
}

// Device is one device Tessera publishes for a GPU.
type Device struct {
	Name string
	Kind Kind
	// Profile and Placement are set for MIG devices.
	Profile   *inventory.MIGProfile
	Placement inventory.Placement
	// Consumes maps counter names of the GPU's counter set to amounts.
	Consumes map[string]int64
}

// GPU is everything published for one physical GPU.
type GPU struct {
	// CounterSet names the GPU's counter set, "gpu-<index>".
	CounterSet string
	// Counters maps counter names to their capacity.
	Counters map[string]int64
	// Devices in publication order, which is the allocator's preference.
	Devices []Device
}

// MIGOffered reports whether MIG partitions of the GPU are published: the GPU
// supports MIG, and MIG mode is on or can be switched on without a reset.
func MIGOffered(gpu inventory.GPU, opts Options) bool {
	return !opts.DisableMIG && gpu.MIG.Capable && len(gpu.MIG.Profiles) > 0 &&
		(gpu.MIG.Enabled || gpu.MIG.ToggleWithoutReset)
}

// WholeOffered reports whether the GPU is published whole and time-shared.
// A GPU whose MIG mode is on and cannot be switched off without a reset
// (an A100 an admin put in MIG mode) runs CUDA only inside MIG partitions,
// so it is offered as partitions alone.
func WholeOffered(gpu inventory.GPU) bool {
	return !gpu.MIG.Enabled || gpu.MIG.ToggleWithoutReset
}

// Build returns the devices and counters of one GPU. They are named after
// the GPU's minor number (/dev/nvidiaN), as NVIDIA's driver names its
// devices: it stays with the physical GPU when another GPU fails to probe
// after a reboot, where the NVML index shifts.
func Build(gpu inventory.GPU, opts Options) GPU {
	out := GPU{CounterSet: gpuapi.CounterSetName(gpu.Minor), Counters: map[string]int64{}}
	slices := max(gpu.MIG.MemorySlices(), 1)
	for i := range slices {
		out.Counters[gpuapi.MemorySliceCounter(i)] = 1
	}
	mig := MIGOffered(gpu, opts)
	var limits []limit
	if mig {
		limits = bindingLimits(gpu.MIG.Profiles, slices)
		for _, l := range limits {
			out.Counters[l.name] = l.capacity
		}
	}

	if WholeOffered(gpu) {
		out.Devices = append(out.Devices, Device{Name: gpuapi.WholeDeviceName(gpu.Minor), Kind: KindGPU, Consumes: maps.Clone(out.Counters)})
		if !opts.DisableSharing {
			out.Devices = append(out.Devices, Device{Name: gpuapi.SharedDeviceName(gpu.Minor), Kind: KindShared, Consumes: maps.Clone(out.Counters)})
		}
	}
	if !mig {
		return out
	}
	for _, pl := range packingOrder(gpu.MIG.Profiles) {
		consumes := map[string]int64{}
		for s := pl.placement.Start; s < pl.placement.End(); s++ {
			consumes[gpuapi.MemorySliceCounter(s)] = 1
		}
		for _, l := range limits {
			if n := l.use(pl.profile); n > 0 {
				consumes[l.name] = n
			}
		}
		out.Devices = append(out.Devices, Device{
			Name:      gpuapi.MIGDeviceName(gpu.Minor, pl.profile.Name, pl.placement.Start),
			Kind:      KindMIG,
			Profile:   pl.profile,
			Placement: pl.placement,
			Consumes:  consumes,
		})
	}
	return out
}
