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

// Models lists the mock backends by name.
var Models = map[string]Model{
	"dgxa100": {
		Name: "dgxa100",
		GPU: corrected(gpus.A100_SXM4_40GB, "NVIDIA A100-SXM4-40GB", func(p map[int]nvml.GpuInstanceProfileInfo) {
		}),
		ProfileNames: names("1g.5gb", "1g.5gb+me", "1g.10gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb"),
		MIGEnabled:   true,
	},
	"dgxh100": {
		Name:               "dgxh100",
		GPU:                corrected(gpus.H100_SXM5_80GB, "NVIDIA H100 80GB HBM3", hopperEngines),
		ProfileNames:       names("1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"),
		ToggleWithoutReset: true,
	},
	"dgxh200": {
		Name:               "dgxh200",
		GPU:                corrected(gpus.H200_SXM5_141GB, "NVIDIA H200", hopperEngines),
		ProfileNames:       names("1g.18gb", "1g.18gb+me", "1g.35gb", "2g.35gb", "3g.71gb", "4g.71gb", "7g.141gb"),
		ToggleWithoutReset: true,
	},
	"dgxb200": {
		Name:               "dgxb200",
		GPU:                corrected(gpus.B200_SXM5_180GB, "NVIDIA B200", func(map[int]nvml.GpuInstanceProfileInfo) {}),
		ProfileNames:       names("1g.23gb", "1g.23gb+me", "1g.45gb", "2g.45gb", "3g.90gb", "4g.90gb", "7g.180gb"),
		ToggleWithoutReset: true,
	},
}

// names maps the seven profiles every one of these GPUs offers, in the order
// 1g, 1g+me, double-memory 1g, 2g, 3g, 4g, 7g.
func names(n1, n1me, n1x2, n2, n3, n4, n7 string) map[int]string {
	return map[int]string{
		nvml.GPU_INSTANCE_PROFILE_1_SLICE:      n1,
		nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV1: n1me,
		nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV2: n1x2,
		nvml.GPU_INSTANCE_PROFILE_2_SLICE:      n2,
		nvml.GPU_INSTANCE_PROFILE_3_SLICE:      n3,
		nvml.GPU_INSTANCE_PROFILE_4_SLICE:      n4,
		nvml.GPU_INSTANCE_PROFILE_7_SLICE:      n7,
	}
}

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
	cfg.MIGProfiles.GpuInstancePlacements = make(map[int][]nvml.GpuInstancePlacement, len(hopperPlacements))
	for id := range cfg.MIGProfiles.GpuInstanceProfiles {
		cfg.MIGProfiles.GpuInstancePlacements[id] = hopperPlacements[id]
	}
	return cfg
}
