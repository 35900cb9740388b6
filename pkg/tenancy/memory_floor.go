package tenancy

import (
	"strconv"
	"strings"

	resourceapi "k8s.io/api/resource/v1"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
)

// gigabyte is NVIDIA's unit in product and MIG profile names: decimal. What
// NVML reports is a little more, in binary units (an H200 "141GB" reports
// about 140 GiB, 150 GB; a MIG "1g.10gb" of an H100 9856 MiB, 10.3 GB), so
// a floor in decimal gigabytes never charges an honest node more than it
// publishes.
const gigabyte = 1000 * 1000 * 1000

// productMemory is the memory NVIDIA publishes for each GPU product, in
// gigabytes, by the name NVML reports for it (nvmlDeviceGetName, the
// productName attribute).
var productMemory = map[string]int64{
	"NVIDIA A100-PCIE-40GB": 40,
	"NVIDIA A100-SXM4-40GB": 40,
	"NVIDIA A100 80GB PCIe": 80,
	"NVIDIA A100-SXM4-80GB": 80,
	"NVIDIA H100 PCIe":      80,
	"NVIDIA H100 80GB HBM3": 80,
	"NVIDIA H100 NVL":       94,
	"NVIDIA H200":           141,
	"NVIDIA H200 NVL":       141,
	"NVIDIA B200":           180,
}

// MemoryFloor is the least GPU memory tenancy charges for device, in bytes,
// whatever memory capacity its node publishes: a node reports the capacity
// itself, and one that under-reports would let a tenant hold more than its
// budget. A whole or time-shared GPU of a product in productMemory holds at
// least the product's published memory; a MIG partition at least what its
// profile's name says ("1g.18gb": 18 GB). Zero where neither is known (a
// product Tessera has no figure for, or a profile name of another form):
// there the published capacity is all tenancy has.
func MemoryFloor(device *resourceapi.Device) int64 {
	switch stringAttr(device, gpuapi.AttrType) {
	case gpuapi.TypeGPU, gpuapi.TypeShared:
		return productMemory[stringAttr(device, gpuapi.AttrProductName)] * gigabyte
	case gpuapi.TypeMIG:
		return profileMemory(stringAttr(device, gpuapi.AttrProfile))
	}
	return 0
}

// profileMemory is the memory a MIG profile's name gives, e.g. 18 GB for
// "1g.18gb" or "1g.18gb+me", or 0.
func profileMemory(profile string) int64 {
	_, mem, ok := strings.Cut(profile, ".")
	if !ok {
		return 0
	}
	mem, _, _ = strings.Cut(mem, "+")
	n, err := strconv.ParseInt(strings.TrimSuffix(mem, "gb"), 10, 64)
	if err != nil || !strings.HasSuffix(mem, "gb") || n <= 0 || n > 1<<20 {
		return 0
	}
	return n * gigabyte
}

func stringAttr(device *resourceapi.Device, name string) string {
	for _, k := range []resourceapi.QualifiedName{resourceapi.QualifiedName(name), resourceapi.QualifiedName(gpuapi.DriverName + "/" + name)} {
		if a, ok := device.Attributes[k]; ok && a.StringValue != nil {
			return *a.StringValue
		}
	}
	return ""
}
