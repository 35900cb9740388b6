// Package migprofile holds Tessera's own table of NVIDIA's published MIG
// profile names, per product, by NVML GPU-instance profile ID.
//
// NVML reports a profile's name only through the versioned profile-info call
// (nvmlDeviceGetGpuInstanceProfileInfoV), which nvml.h documents as returning
// NVML_ERROR_NOT_SUPPORTED "if device doesn't have MIG mode enabled": a GPU
// with MIG off, every Hopper GPU in its default state, has no names to ask
// for. Device names carry the profile name, so they must not change when MIG
// mode does: discovery names profiles from this table, and checks the table
// against NVML's names whenever MIG is on. The mock backends' geometry is
// pinned to the same table (nvmlmock), so tests see the names a node shows.
//
// Names are from NVIDIA's MIG user guide ("Supported MIG Profiles").
package migprofile

import (
	"maps"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// products maps NVML's product name (nvmlDeviceGetName) to its profiles.
var products = map[string]map[int]string{
	"NVIDIA A100-SXM4-40GB": seven("1g.5gb", "1g.5gb+me", "1g.10gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb"),
	"NVIDIA H100 80GB HBM3": seven("1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"),
	"NVIDIA H200":           seven("1g.18gb", "1g.18gb+me", "1g.35gb", "2g.35gb", "3g.71gb", "4g.71gb", "7g.141gb"),
	"NVIDIA B200":           seven("1g.23gb", "1g.23gb+me", "1g.45gb", "2g.45gb", "3g.90gb", "4g.90gb", "7g.180gb"),
}

// seven maps the seven profiles every one of these GPUs offers, in the order
// 1g, 1g+me, double-memory 1g, 2g, 3g, 4g, 7g.
func seven(n1, n1me, n1x2, n2, n3, n4, n7 string) map[int]string {
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

// Names returns the MIG profile names of a product by NVML profile ID, and
// whether Tessera knows the product. The map is the caller's to change.
func Names(product string) (map[int]string, bool) {
	names, ok := products[product]
	return maps.Clone(names), ok
}
