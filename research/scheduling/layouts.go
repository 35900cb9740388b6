package scheduling

import (
	"fmt"
	"strings"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/dynamic-resource-allocation/deviceattribute"
	"k8s.io/utils/ptr"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/internal/testing/builder"
	"github.com/tessera-gpu/tessera/pkg/inventory"
	"github.com/tessera-gpu/tessera/pkg/resourceslice"
)

// A Layout is one way of publishing a node's GPUs, so that the scheduler's
// cost can be compared across layouts built from the same inventory.
type Layout struct {
	// Name is "tessera", "plain" or "nvidia".
	Name string
	// Driver is the DRA driver name the slices are published under.
	Driver string
	// Slices returns what a node publishes.
	Slices func(node string, inv inventory.Node) []*resourceapi.ResourceSlice
	// Whole, MIG and Shared name a GPU's devices; MIG returns "" where the
	// layout has no partitions and Shared "" where it has no shares.
	Whole  func(gpu int) string
	MIG    func(gpu int, profile inventory.MIGProfile, start int) string
	Shared func(gpu int) string
	// WholeClass and MIGClass are the DeviceClasses users ask for; MIGClass
	// and SharedClass are "" where the layout has none.
	WholeClass, MIGClass, SharedClass string
	// MIGProfileClass, where set, names a DeviceClass per MIG profile that
	// needs no request selector.
	MIGProfileClass func(profile string) string
}

// Tessera is Tessera's layout as pkg/resourceslice publishes it.
var Tessera = Layout{
	Name:   "tessera",
	Driver: gpuapi.DriverName,
	Slices: func(node string, inv inventory.Node) []*resourceapi.ResourceSlice {
		return resourceslice.Objects(node, resourceslice.Build(node, inv, resourceslice.Options{Pool: "default"}))
	},
	Whole: gpuapi.WholeDeviceName,
	MIG: func(gpu int, p inventory.MIGProfile, start int) string {
		return gpuapi.MIGDeviceName(gpu, p.Name, start)
	},
	Shared:      gpuapi.SharedDeviceName,
	WholeClass:  gpuapi.ClassGPU,
	MIGClass:    gpuapi.ClassMIG,
	SharedClass: gpuapi.ClassShared,
}

// Plain publishes the same GPUs as plain whole devices: no MIG, no sharing,
// no counters, the layout of a driver without partitions. Its devices carry
// type and uuid, and pool because Tessera's shipped classes select on it.
var Plain = Layout{
	Name:   "plain",
	Driver: gpuapi.DriverName,
	Slices: func(node string, inv inventory.Node) []*resourceapi.ResourceSlice {
		slice := builder.MakeSlice(node+"-plain", node)
		for _, g := range inv.GPUs {
			slice.Device(builder.MakeDevice(gpuapi.WholeDeviceName(g.Index)).
				Attr(gpuapi.AttrType, gpuapi.TypeGPU).Attr(gpuapi.AttrUUID, g.UUID).Attr(gpuapi.AttrPool, gpuapi.PoolDefault).Obj())
		}
		return []*resourceapi.ResourceSlice{slice.Obj()}
	},
	Whole:      gpuapi.WholeDeviceName,
	MIG:        func(int, inventory.MIGProfile, int) string { return "" },
	Shared:     func(int) string { return "" },
	WholeClass: gpuapi.ClassGPU,
}

// NVIDIA's DRA driver (kubernetes-sigs/dra-driver-nvidia-gpu, partitionable
// devices with dynamic MIG), rebuilt from the same inventory: per GPU the
// whole GPU and every MIG placement, named gpu-<minor>-mig-<profile>-<profile
// ID>-<start>, with its attribute set (type, uuid or parentUUID, profile,
// productName, brand, architecture, the three versions, PCI bus ID and PCIe
// root), the profile's engine counts and memory as capacities, and one counter
// set per GPU "gpu-<minor>-counter-set" holding a counter per capacity plus
// one per memory slice, which every device consumes. Its DeviceClasses select
// on type alone.
const nvidiaDriver = "gpu.nvidia.com"

// NVIDIA is NVIDIA's layout (see nvidiaDriver).
var NVIDIA = Layout{
	Name:       "nvidia",
	Driver:     nvidiaDriver,
	Slices:     nvidiaSlices,
	Whole:      func(gpu int) string { return fmt.Sprintf("gpu-%d", gpu) },
	MIG:        nvidiaMIGName,
	Shared:     func(int) string { return "" },
	WholeClass: "gpu.nvidia.com",
	MIGClass:   "mig.nvidia.com",
}

// Layouts lists the layouts compared, Tessera's first.
var Layouts = []Layout{Tessera, Plain, NVIDIA}

// nvidiaClasses are NVIDIA's DeviceClasses for whole GPUs and MIG devices.
var nvidiaClasses = []*resourceapi.DeviceClass{
	nvidiaClass("gpu.nvidia.com", "gpu"),
	nvidiaClass("mig.nvidia.com", "mig"),
}

func nvidiaClass(name, typ string) *resourceapi.DeviceClass {
	return &resourceapi.DeviceClass{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: resourceapi.DeviceClassSpec{Selectors: []resourceapi.DeviceSelector{{CEL: &resourceapi.CELDeviceSelector{
			Expression: fmt.Sprintf("device.driver == %q && device.attributes[%q].type == %q", nvidiaDriver, nvidiaDriver, typ),
		}}}},
	}
}

func nvidiaMIGName(gpu int, p inventory.MIGProfile, start int) string {
	return fmt.Sprintf("gpu-%d-mig-%s-%d-%d", gpu, gpuapi.ProfileLabel(p.Name), p.ID, start)
}

func nvidiaSlices(node string, inv inventory.Node) []*resourceapi.ResourceSlice {
	var counterSets []resourceapi.CounterSet
	var devices []resourceapi.Device
	for _, g := range inv.GPUs {
		set := fmt.Sprintf("gpu-%d-counter-set", g.Minor)
		// The GPU's capacities are those of its largest profile.
		var full inventory.MIGProfile
		for _, p := range g.MIG.Profiles {
			if p.SliceCount > full.SliceCount || (p.SliceCount == full.SliceCount && p.MemoryBytes > full.MemoryBytes) {
				full = p
			}
		}
		all := nvidiaCounters(full, 0, g.MIG.MemorySlices())
		counterSets = append(counterSets, resourceapi.CounterSet{Name: set, Counters: all})
		attrs := nvidiaAttributes(inv, g)
		attrs["type"] = resourceapi.DeviceAttribute{StringValue: ptr.To("gpu")}
		attrs["uuid"] = resourceapi.DeviceAttribute{StringValue: ptr.To(g.UUID)}
		devices = append(devices, resourceapi.Device{
			Name:             fmt.Sprintf("gpu-%d", g.Minor),
			Attributes:       attrs,
			Capacity:         nvidiaCapacities(full),
			ConsumesCounters: []resourceapi.DeviceCounterConsumption{{CounterSet: set, Counters: all}},
		})
		for _, p := range g.MIG.Profiles {
			for _, pl := range p.Placements {
				attrs := nvidiaAttributes(inv, g)
				attrs["type"] = resourceapi.DeviceAttribute{StringValue: ptr.To("mig")}
				attrs["parentUUID"] = resourceapi.DeviceAttribute{StringValue: ptr.To(g.UUID)}
				attrs["profile"] = resourceapi.DeviceAttribute{StringValue: ptr.To(p.Name)}
				devices = append(devices, resourceapi.Device{
					Name:             nvidiaMIGName(g.Minor, p, pl.Start),
					Attributes:       attrs,
					Capacity:         nvidiaCapacities(p),
					ConsumesCounters: []resourceapi.DeviceCounterConsumption{{CounterSet: set, Counters: nvidiaCounters(p, pl.Start, pl.Size)}},
				})
			}
		}
	}
	// The counters in a slice of their own, the devices in slices of the most a slice
	// with counters may hold; all in one pool.
	count := 1 + (len(devices)+resourceapi.ResourceSliceMaxDevicesWithAdvancedFeatures-1)/resourceapi.ResourceSliceMaxDevicesWithAdvancedFeatures
	nvidiaSlice := func(name string) *builder.SliceBuilder {
		return builder.MakeSlice(name, node).Driver(nvidiaDriver).Pool(node, 0, int64(count))
	}
	out := []*resourceapi.ResourceSlice{nvidiaSlice(node + "-nvidia-counters").Counters(counterSets...).Obj()}
	for start := 0; start < len(devices); start += resourceapi.ResourceSliceMaxDevicesWithAdvancedFeatures {
		end := min(start+resourceapi.ResourceSliceMaxDevicesWithAdvancedFeatures, len(devices))
		out = append(out, nvidiaSlice(fmt.Sprintf("%s-nvidia-%d", node, len(out))).Device(devices[start:end]...).Obj())
	}
	return out
}

func nvidiaAttributes(inv inventory.Node, g inventory.GPU) map[resourceapi.QualifiedName]resourceapi.DeviceAttribute {
	attrs := map[resourceapi.QualifiedName]resourceapi.DeviceAttribute{
		"productName":           {StringValue: ptr.To(g.ProductName)},
		"brand":                 {StringValue: ptr.To(g.Brand)},
		"architecture":          {StringValue: ptr.To(g.Architecture)},
		"cudaComputeCapability": {VersionValue: ptr.To(semver(g.CUDAComputeCapability))},
		"driverVersion":         {VersionValue: ptr.To(semver(inv.DriverVersion))},
		"cudaDriverVersion":     {VersionValue: ptr.To(semver(inv.CUDADriverVersion))},
	}
	if g.PCIBusID != "" {
		attrs[deviceattribute.StandardDeviceAttributePCIBusID] = resourceapi.DeviceAttribute{StringValue: ptr.To(g.PCIBusID)}
	}
	if g.PCIeRoot != "" {
		attrs[deviceattribute.StandardDeviceAttributePCIeRoot] = resourceapi.DeviceAttribute{StringValue: ptr.To(g.PCIeRoot)}
	}
	return attrs
}

func nvidiaCapacities(p inventory.MIGProfile) map[resourceapi.QualifiedName]resourceapi.DeviceCapacity {
	out := map[resourceapi.QualifiedName]resourceapi.DeviceCapacity{}
	for name, v := range nvidiaProfileValues(p) {
		out[resourceapi.QualifiedName(name)] = resourceapi.DeviceCapacity{Value: *resource.NewQuantity(v, resource.BinarySI)}
	}
	return out
}

func nvidiaCounters(p inventory.MIGProfile, start, size int) map[string]resourceapi.Counter {
	out := map[string]resourceapi.Counter{}
	for name, v := range nvidiaProfileValues(p) {
		out[camelToDNS(name)] = resourceapi.Counter{Value: *resource.NewQuantity(v, resource.BinarySI)}
	}
	for i := start; i < start+size; i++ {
		out[fmt.Sprintf("memory-slice-%d", i)] = resourceapi.Counter{Value: *resource.NewQuantity(1, resource.BinarySI)}
	}
	return out
}

func nvidiaProfileValues(p inventory.MIGProfile) map[string]int64 {
	return map[string]int64{
		"multiprocessors": int64(p.Multiprocessors),
		"copyEngines":     int64(p.CopyEngines),
		"decoders":        int64(p.Decoders),
		"encoders":        int64(p.Encoders),
		"jpegEngines":     int64(p.JPEGEngines),
		"ofaEngines":      int64(p.OFAEngines),
		"memory":          int64(p.MemoryBytes),
	}
}

func camelToDNS(s string) string {
	var b strings.Builder
	for i, r := range s {
		if r >= 'A' && r <= 'Z' {
			if i > 0 {
				b.WriteByte('-')
			}
			r += 'a' - 'A'
		}
		b.WriteRune(r)
	}
	return b.String()
}

func semver(v string) string {
	parts := strings.Split(v, ".")
	for len(parts) < 3 {
		parts = append(parts, "0")
	}
	return strings.Join(parts, ".")
}

// DeviceClasses returns every DeviceClass the layouts' claims use: the ones
// Tessera ships and NVIDIA's.
func DeviceClasses() []*resourceapi.DeviceClass {
	var out []*resourceapi.DeviceClass
	for _, name := range gpuapi.Classes {
		out = append(out, Classes[name])
	}
	return append(out, nvidiaClasses...)
}
