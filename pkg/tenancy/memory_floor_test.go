package tenancy_test

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/utils/ptr"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

const gb = 1000 * 1000 * 1000

// TestMemoryFloor: tenancy never takes a device's memory below what NVIDIA
// publishes for the product or MIG profile the node names, and never above
// what an honest node publishes (the mocks publish what NVML reports).
func TestMemoryFloor(t *testing.T) {
	device := func(typ, product, profile, memory string) resourceapi.Device {
		return gpuDevice("d", typ, product, profile, memory)
	}
	for name, tc := range map[string]struct {
		device resourceapi.Device
		want   int64 // DeviceMemory's figure; -1: none
	}{
		"honest H200":                        {device(gpuapi.TypeGPU, "NVIDIA H200", "", "141Gi"), 141 * gi},
		"H200 reporting 1Gi":                 {device(gpuapi.TypeGPU, "NVIDIA H200", "", "1Gi"), 141 * gb},
		"shared H200 reporting 1Gi":          {device(gpuapi.TypeShared, "NVIDIA H200", "", "1Gi"), 141 * gb},
		"H200 reporting no memory":           {device(gpuapi.TypeGPU, "NVIDIA H200", "", ""), 141 * gb},
		"honest A100 40GB (NVML's MiB)":      {device(gpuapi.TypeGPU, "NVIDIA A100-SXM4-40GB", "", "40960Mi"), 40960 * 1024 * 1024},
		"H100 reporting 1":                   {device(gpuapi.TypeGPU, "NVIDIA H100 80GB HBM3", "", "1"), 80 * gb},
		"honest MIG 1g.5gb (NVML's 4864MiB)": {device(gpuapi.TypeMIG, "NVIDIA A100-SXM4-40GB", "1g.5gb", "4864Mi"), 4864 * 1024 * 1024},
		"MIG 1g.18gb reporting 1":            {device(gpuapi.TypeMIG, "NVIDIA H200", "1g.18gb", "1"), 18 * gb},
		"MIG 1g.18gb+me reporting 1":         {device(gpuapi.TypeMIG, "NVIDIA H200", "1g.18gb+me", "1"), 18 * gb},
		"MIG 7g.180gb reporting 1Gi":         {device(gpuapi.TypeMIG, "NVIDIA B200", "7g.180gb", "1Gi"), 180 * gb},
		"MIG of a malformed profile":         {device(gpuapi.TypeMIG, "NVIDIA H200", "1g.lots", "1"), 1},
		"a product Tessera has no figure of": {device(gpuapi.TypeGPU, "NVIDIA L4", "", "1Gi"), gi},
		"unknown product, no memory":         {device(gpuapi.TypeGPU, "NVIDIA L4", "", ""), -1},
	} {
		t.Run(name, func(t *testing.T) {
			s := slice(nil)
			s.Spec.Devices = []resourceapi.Device{tc.device}
			got := tenancy.DeviceMemory([]*resourceapi.ResourceSlice{s})
			want := map[tenancy.DeviceID]int64{{Driver: gpuapi.DriverName, Pool: "n1", Device: "d"}: tc.want}
			if tc.want < 0 {
				want = map[tenancy.DeviceID]int64{}
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("memory (-want +got):\n%s", diff)
			}
		})
	}
}

// TestUnderReportedMemoryKeepsTheBudget: a node publishes its H200s with
// 1Gi of memory each; a tenant with a 200Gi budget asks for two of them.
// The first costs the product's 141 GB, the second does not fit.
func TestUnderReportedMemoryKeepsTheBudget(t *testing.T) {
	s := slice(nil)
	for _, name := range []string{"gpu-0", "gpu-1"} {
		s.Spec.Devices = append(s.Spec.Devices, gpuDevice(name, gpuapi.TypeGPU, "NVIDIA H200", "", "1Gi"))
	}
	memory := tenancy.DeviceMemory([]*resourceapi.ResourceSlice{s})
	tenant := makeTenant("t").Classes(gpuapi.ClassGPU).Memory("200Gi").Obj()
	first := makeClaim("a", "c1").Request("gpu", gpuapi.ClassGPU).Allocated("gpu", "gpu-0").Obj()
	d := tenancy.Decide(tenant, nil, first, memory)
	if !d.Admit || d.Cost.Memory != 141*gb {
		t.Fatalf("first H200: admit %v at %d bytes (%s), want admitted at 141 GB", d.Admit, d.Cost.Memory, d.Message)
	}
	second := makeClaim("a", "c2").Request("gpu", gpuapi.ClassGPU).Allocated("gpu", "gpu-1").Obj()
	if d := tenancy.Decide(tenant, d.Holdings, second, memory); d.Admit {
		t.Errorf("second H200 admitted on a 200Gi budget: %s", d.Message)
	}
}

// gpuDevice is a device as the plugin publishes it, with the attributes
// MemoryFloor reads and, unless "", a memory capacity.
func gpuDevice(name, typ, product, profile, memory string) resourceapi.Device {
	str := func(v string) resourceapi.DeviceAttribute { return resourceapi.DeviceAttribute{StringValue: ptr.To(v)} }
	d := resourceapi.Device{Name: name, Attributes: map[resourceapi.QualifiedName]resourceapi.DeviceAttribute{
		gpuapi.AttrType: str(typ), gpuapi.AttrProductName: str(product),
	}}
	if profile != "" {
		d.Attributes[gpuapi.AttrProfile] = str(profile)
	}
	if memory != "" {
		d.Capacity = map[resourceapi.QualifiedName]resourceapi.DeviceCapacity{gpuapi.CapMemory: {Value: resource.MustParse(memory)}}
	}
	return d
}
