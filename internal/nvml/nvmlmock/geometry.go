// Package nvmlmock builds go-nvml mock servers (dgxa100, dgxh100, dgxh200,
// dgxb200) that behave like the hardware where Tessera depends on it.
//
// go-nvml's stock mocks get several things wrong for a DRA driver: their
// H100/H200/B200 MIG placements are in compute slices rather than memory
// slices, UUIDs are random on every construction, free memory and the PCI bus
// ID are empty, creating a GPU instance is never refused, and MIG-device
// enumeration and the named profile-info call panic. This package fixes each.
package nvmlmock

import (
	"maps"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/gpus"

	"github.com/tessera-gpu/tessera/internal/nvml/migprofile"
)

// Model is one of the mock GPU servers.
type Model struct {
	// Name is the backend name, e.g. "dgxh200".
	Name string
	// GPU is the corrected per-GPU configuration.
	GPU gpus.Config
	// ProfileNames maps NVML GPU-instance profile IDs to NVIDIA's names.
	ProfileNames map[int]string
	// MIGEnabled is the MIG mode the GPUs start in. The A100 cannot switch
	// MIG mode without a reset, so its mock starts with MIG on, as an admin
	// would have configured such a node.
	MIGEnabled bool
	// ToggleWithoutReset is false where a MIG mode change only becomes
	// pending until the GPU is reset.
	ToggleWithoutReset bool
}

// hopperPlacements is NVIDIA's published placement table for the A100, H100,
// H200 and B200 (MIG user guide), in memory slices: eight memory slices, the
// 1g profiles at starts 0-6, the double-memory 1g and the 2g profiles on two
// slices, the 3g and 4g on four, the 7g on all eight.
var hopperPlacements = map[int][]nvml.GpuInstancePlacement{
	nvml.GPU_INSTANCE_PROFILE_1_SLICE:      seq(0, 1, 1, 7),
	nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV1: seq(0, 1, 1, 7),
	nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV2: seq(0, 2, 2, 4),
	nvml.GPU_INSTANCE_PROFILE_2_SLICE:      seq(0, 2, 2, 3),
	nvml.GPU_INSTANCE_PROFILE_3_SLICE:      seq(0, 4, 4, 2),
	nvml.GPU_INSTANCE_PROFILE_4_SLICE:      seq(0, 4, 4, 1),
	nvml.GPU_INSTANCE_PROFILE_7_SLICE:      seq(0, 8, 8, 1),
}

// seq returns n placements of the given size, starting at start and stepping.
func seq(start, step, size, n int) []nvml.GpuInstancePlacement {
	out := make([]nvml.GpuInstancePlacement, n)
	for i := range out {
		out[i] = nvml.GpuInstancePlacement{Start: uint32(start + i*step), Size: uint32(size)}
	}
	return out
}

// Models lists the mock backends by name. Profile names come from Tessera's
// own table (migprofile), the one discovery names profiles from while MIG is
// off, so that the mocks pin it.
var Models = map[string]Model{
	"dgxa100": {
		Name:         "dgxa100",
		GPU:          corrected(gpus.A100_SXM4_40GB, "NVIDIA A100-SXM4-40GB", func(map[int]nvml.GpuInstanceProfileInfo) {}),
		ProfileNames: mustNames("NVIDIA A100-SXM4-40GB"),
		MIGEnabled:   true,
	},
	"dgxh100": {
		Name:               "dgxh100",
		GPU:                corrected(gpus.H100_SXM5_80GB, "NVIDIA H100 80GB HBM3", hopperEngines),
		ProfileNames:       mustNames("NVIDIA H100 80GB HBM3"),
		ToggleWithoutReset: true,
	},
	"dgxh200": {
		Name:               "dgxh200",
		GPU:                corrected(gpus.H200_SXM5_141GB, "NVIDIA H200", hopperEngines),
		ProfileNames:       mustNames("NVIDIA H200"),
		ToggleWithoutReset: true,
	},
	"dgxb200": {
		Name:               "dgxb200",
		GPU:                corrected(gpus.B200_SXM5_180GB, "NVIDIA B200", func(map[int]nvml.GpuInstanceProfileInfo) {}),
		ProfileNames:       mustNames("NVIDIA B200"),
		ToggleWithoutReset: true,
	},
}

func mustNames(product string) map[int]string {
	names, ok := migprofile.Names(product)
	if !ok {
		panic("nvmlmock: no MIG profile names for " + product)
	}
	return names
}

// zeroInstanceProfile is a profile every mock GPU reports with an instance
// count of zero, as NVML does for a profile the GPU knows but cannot place in
// its present configuration. Code that lists a profile's instances must skip
// it: go-nvml's GetGpuInstances returns ERROR_INVALID_ARGUMENT for it without
// calling NVML (pkg/nvml/device.go, v0.13.4-1: "if count == 0 { return nil,
// ERROR_INVALID_ARGUMENT }"), which the mock reproduces.
const zeroInstanceProfile = nvml.GPU_INSTANCE_PROFILE_2_SLICE_REV1

// hopperEngines gives the full H100/H200 partition its media engines, which
// go-nvml's mock leaves at zero although the hardware's 7g profile owns the
// GPU's one optical-flow engine and all seven JPEG decoders.
func hopperEngines(p map[int]nvml.GpuInstanceProfileInfo) {
	full := p[nvml.GPU_INSTANCE_PROFILE_7_SLICE]
	full.OfaCount = 1
	full.JpegCount = 7
	full.DecoderCount = 7
	p[nvml.GPU_INSTANCE_PROFILE_7_SLICE] = full
}

// corrected copies a go-nvml GPU configuration (never mutating go-nvml's
// package variables) with the published placement table and a real name.
func corrected(base gpus.Config, name string, fix func(map[int]nvml.GpuInstanceProfileInfo)) gpus.Config {
	cfg := base
	cfg.Name = name
	cfg.MIGProfiles.GpuInstanceProfiles = maps.Clone(base.MIGProfiles.GpuInstanceProfiles)
	fix(cfg.MIGProfiles.GpuInstanceProfiles)
	cfg.MIGProfiles.GpuInstanceProfiles[zeroInstanceProfile] = nvml.GpuInstanceProfileInfo{
		Id: zeroInstanceProfile, SliceCount: 2, InstanceCount: 0,
		MemorySizeMB: cfg.MIGProfiles.GpuInstanceProfiles[nvml.GPU_INSTANCE_PROFILE_2_SLICE].MemorySizeMB,
	}
	cfg.MIGProfiles.GpuInstancePlacements = make(map[int][]nvml.GpuInstancePlacement, len(hopperPlacements))
	for id := range cfg.MIGProfiles.GpuInstanceProfiles {
		cfg.MIGProfiles.GpuInstancePlacements[id] = hopperPlacements[id]
	}
	return cfg
}
