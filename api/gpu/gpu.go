// Package gpu is Tessera's wire contract: every name that crosses a process or
// API boundary (the DRA driver, the DeviceClasses, device, attribute, capacity
// and counter names, taint keys, the CDI vendor and class, the opaque config
// group). Everything else imports these names; nothing redefines them. It
// imports no other Tessera package and defines nothing but names.
package gpu

import (
	"fmt"
	"strings"
)

// DriverName is Tessera's DRA driver name. Attributes and capacities are
// qualified by it when published.
const DriverName = "gpu.tessera.dev"

// DeviceClasses shipped by the chart.
const (
	// ClassGPU selects whole GPUs.
	ClassGPU = "gpu.tessera.dev"
	// ClassMIG selects MIG partitions.
	ClassMIG = "mig.gpu.tessera.dev"
	// ClassShared selects time-shared GPUs, allocated in memory and compute shares.
	ClassShared = "shared.gpu.tessera.dev"
)

// Classes lists the shipped DeviceClasses in a stable order.
var Classes = []string{ClassGPU, ClassMIG, ClassShared}

// Values of the AttrType attribute.
const (
	TypeGPU    = "gpu"
	TypeMIG    = "mig"
	TypeShared = "shared"
)

// ClassType maps each shipped DeviceClass to the device type it selects.
var ClassType = map[string]string{ClassGPU: TypeGPU, ClassMIG: TypeMIG, ClassShared: TypeShared}

// Attribute names (unqualified; published under DriverName). Where NVIDIA's
// DRA driver has an attribute for the same thing, the name and type are the
// same, so that users' selectors port by changing only the domain.
const (
	AttrType                  = "type"
	AttrUUID                  = "uuid"
	AttrParentUUID            = "parentUUID"
	AttrProductName           = "productName"
	AttrBrand                 = "brand"
	AttrArchitecture          = "architecture"
	AttrCUDAComputeCapability = "cudaComputeCapability"
	AttrDriverVersion         = "driverVersion"
	AttrCUDADriverVersion     = "cudaDriverVersion"
	AttrIndex                 = "index"
	AttrMinor                 = "minor"
	AttrProfile               = "profile"
	AttrPlacementStart        = "placementStart"
	AttrPlacementSize         = "placementSize"
	AttrPool                  = "pool"
)

// PoolDefault is the AttrPool value of devices that serve every tenant; the
// shipped DeviceClasses select only these. Any other value names a pool
// dedicated to one tenant (GPUTenant spec.dedicatedPool).
const PoolDefault = "default"

// Capacity names (unqualified; published under DriverName).
const (
	CapMemory          = "memory"
	CapCompute         = "compute"
	CapMultiprocessors = "multiprocessors"
	CapCopyEngines     = "copyEngines"
	CapDecoders        = "decoders"
	CapEncoders        = "encoders"
	CapJPEGEngines     = "jpegEngines"
	CapOFAEngines      = "ofaEngines"
)

// Counter names of a GPU's counter set.
const (
	// CounterOFAEngines limits the partitions that take the GPU's single
	// optical-flow engine.
	CounterOFAEngines = "ofa-engines"
	memorySlicePrefix = "memory-slice-"
)

// MemorySliceCounter is the counter of MIG memory slice i.
func MemorySliceCounter(i int) string { return fmt.Sprintf("%s%d", memorySlicePrefix, i) }

// IsMemorySliceCounter reports whether name is a memory-slice counter.
func IsMemorySliceCounter(name string) bool { return strings.HasPrefix(name, memorySlicePrefix) }

// CounterSetName is the name of GPU index's counter set.
func CounterSetName(index int) string { return fmt.Sprintf("gpu-%d", index) }

// WholeDeviceName is the device name of a whole GPU.
func WholeDeviceName(index int) string { return fmt.Sprintf("gpu-%d", index) }

// SharedDeviceName is the device name of a time-shared GPU.
func SharedDeviceName(index int) string { return fmt.Sprintf("gpu-%d-shared", index) }

// MIGDeviceName is the device name of a MIG partition. Device names must be
// DNS labels, so the profile loses its dots and "+" becomes "-":
// "1g.18gb+me" at start 3 on GPU 0 is "gpu-0-mig-1g18gb-me-3".
func MIGDeviceName(index int, profile string, start int) string {
	return fmt.Sprintf("gpu-%d-mig-%s-%d", index, ProfileLabel(profile), start)
}

// ProfileLabel turns a MIG profile name into a DNS-label fragment.
func ProfileLabel(profile string) string {
	return strings.ToLower(strings.NewReplacer(".", "", "+", "-", "_", "-").Replace(profile))
}

// TaintKeyUnhealthy is the key of the device taint on an unhealthy GPU's
// devices. Its value says why: "xid-<n>" or "gpu-lost".
const TaintKeyUnhealthy = "gpu.tessera.dev/unhealthy"

// CDI names of per-claim specs: devices are "<CDIVendor>/<CDIClass>=<name>".
const (
	CDIVendor = DriverName
	CDIClass  = "claim"
)

// ConfigGroup is the API group of the opaque device configuration.
const ConfigGroup = "config.gpu.tessera.dev"
