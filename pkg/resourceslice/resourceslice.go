// Package resourceslice turns a node's inventory into the ResourceSlices that
// Tessera publishes: one pool named after the node, one slice (or more, past
// eight GPUs) holding the GPUs' counter sets, and device slices of at most 64
// devices: first the whole and shared GPUs in index order, then the MIG
// partitions profile by profile, each GPU's in the packing order of package
// partition (or, when blocked devices are withdrawn, each GPU's devices in
// slices of their own). It is pure and deterministic: the same
// inventory gives byte-identical slices, so republishing never churns.
package resourceslice

import (
	"fmt"
	"strings"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/dynamic-resource-allocation/deviceattribute"
	draslices "k8s.io/dynamic-resource-allocation/resourceslice"
	"k8s.io/utils/ptr"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/pkg/inventory"
	"github.com/tessera-gpu/tessera/pkg/partition"
)

// Limits of the resource.k8s.io/v1 API that the layout respects.
const (
	maxCounterSetsPerSlice = resourceapi.ResourceSliceMaxCounterSets
	// Devices that consume counters count as "advanced" devices.
	maxDevicesPerSlice = resourceapi.ResourceSliceMaxDevicesWithAdvancedFeatures
)

// Share request policy of the time-shared GPU: memory is handed out in steps
// of 256 MiB (1 GiB when a claim does not say), compute in whole per cent of
// the SMs (10 % when a claim does not say).
var (
	shareMemoryStep    = resource.MustParse("256Mi")
	shareMemoryDefault = resource.MustParse("1Gi")
	shareComputeMin    = resource.MustParse("1")
	shareComputeMax    = resource.MustParse("100")
	shareComputeStep   = resource.MustParse("1")
	shareComputeDflt   = resource.MustParse("10")
)

// Options choose what a node publishes.
type Options struct {
	// Pool is the value of the pool attribute of every device, which lets
	// the controller build dedicated per-tenant classes.
	Pool string
	// Partition holds the admin's per-node choices.
	Partition partition.Options
	// Taints are added to the named devices (device health).
	Taints map[string][]resourceapi.DeviceTaint
	// BindingConditions and BindingFailureConditions are set on every
	// device: with tenancy on, the scheduler allocates, then waits for the
	// tenancy controller to admit or reject the allocation.
	BindingConditions, BindingFailureConditions []string
	// Prepared names the devices prepared on the node (a time-shared GPU
	// with any share prepared included). When WithdrawBlocked is set, the
	// devices they block are left out until they are unprepared.
	Prepared map[string]bool
	// Allocated names the devices that the API server shows allocated on
	// the node. None of them is ever withdrawn, whatever Prepared says: a
	// stale Prepared (an entry left by a failed unprepare, another plugin
	// instance's copy one write behind) may block a device that has been
	// allocated since, and hiding it would let the allocator count its
	// counters free.
	Allocated map[string]bool
	// WithdrawBlocked publishes only what can still be allocated next to
	// the prepared devices (see blocked), each GPU's devices in slices of
	// their own so that a prepare or unprepare changes one slice (see
	// perGPUSlices).
	WithdrawBlocked bool
}

// Build returns the resources of one node, in a single pool named after it.
func Build(nodeName string, node inventory.Node, opts Options) draslices.DriverResources {
	gpus := make([]partition.GPU, len(node.GPUs))
	for i, gpu := range node.GPUs {
		gpus[i] = partition.Build(gpu, opts.Partition)
	}

	var slices []draslices.Slice
	for start := 0; start < len(gpus); start += maxCounterSetsPerSlice {
		var sets []resourceapi.CounterSet
		for _, g := range gpus[start:min(start+maxCounterSetsPerSlice, len(gpus))] {
			sets = append(sets, resourceapi.CounterSet{Name: g.CounterSet, Counters: counters(g.Counters)})
		}
		slices = append(slices, draslices.Slice{SharedCounters: sets})
	}

	if opts.WithdrawBlocked {
		slices = append(slices, perGPUSlices(node, gpus, opts)...)
	} else {
		slices = append(slices, packedSlices(node, gpus, opts)...)
	}
	return draslices.DriverResources{Pools: map[string]draslices.Pool{nodeName: {Slices: slices}}}
}

// packedSlices is the layout of a node that publishes every device: whole
// and shared GPUs first, MIG partitions after them, in slices of at most 64.
// The allocator evaluates the class's and the request's CEL selectors on
// each device in turn until one fits, so a whole-GPU or share claim is
// decided after a few evaluations instead of walking past every partition of
// every GPU in use. MIG partitions are profile-major: all GPUs' placements of
// one profile together, GPU by GPU, each GPU's in packing order. Among the
// devices of one profile that is the order GPU by GPU would give, so the
// allocator chooses the same partitions, but a claim for one profile stops
// walking past the other profiles' partitions of every GPU in use.
func packedSlices(node inventory.Node, gpus []partition.GPU, opts Options) []draslices.Slice {
	var first []resourceapi.Device
	var migs [][]resourceapi.Device // by profile, in order of first appearance
	profileIndex := map[int]int{}
	for i, g := range gpus {
		for _, d := range g.Devices {
			dev := device(node, node.GPUs[i], g, d, opts)
			if d.Kind != partition.KindMIG {
				first = append(first, dev)
				continue
			}
			j, ok := profileIndex[d.Profile.ID]
			if !ok {
				j = len(migs)
				profileIndex[d.Profile.ID] = j
				migs = append(migs, nil)
			}
			migs[j] = append(migs[j], dev)
		}
	}
	devices := first
	for _, m := range migs {
		devices = append(devices, m...)
	}
	return chunk(devices)
}

// perGPUSlices is the layout of a node that withdraws blocked devices: each
// GPU's published devices in slices of their own (one for up to 64 devices),
// in the GPU's order (whole, shared, then its partitions in packing order).
// A prepare or unprepare changes what one GPU publishes, so it changes one
// slice, and the publication controller then updates that slice in place
// under the same pool generation (it bumps the generation, and rewrites every
// slice, when more than one slice changes: see Steps). Among the devices of one kind or
// profile the order is the same as packedSlices's, so the allocator chooses
// the same devices; the other kinds it walks past are few, because a busy
// GPU publishes little.
func perGPUSlices(node inventory.Node, gpus []partition.GPU, opts Options) []draslices.Slice {
	var out []draslices.Slice
	for i, g := range gpus {
		withdrawn := blocked(g, opts.Prepared)
		var devices []resourceapi.Device
		for _, d := range g.Devices {
			if !withdrawn[d.Name] || opts.Allocated[d.Name] {
				devices = append(devices, device(node, node.GPUs[i], g, d, opts))
			}
		}
		out = append(out, chunk(devices)...)
	}
	return out
}

func chunk(devices []resourceapi.Device) []draslices.Slice {
	var out []draslices.Slice
	for start := 0; start < len(devices); start += maxDevicesPerSlice {
		out = append(out, draslices.Slice{Devices: devices[start:min(start+maxDevicesPerSlice, len(devices))]})
	}
	return out
}

func counters(in map[string]int64) map[string]resourceapi.Counter {
	out := make(map[string]resourceapi.Counter, len(in))
	for name, v := range in {
		out[name] = resourceapi.Counter{Value: *resource.NewQuantity(v, resource.DecimalSI)}
	}
	return out
}

func device(node inventory.Node, gpu inventory.GPU, g partition.GPU, d partition.Device, opts Options) resourceapi.Device {
	attrs := map[resourceapi.QualifiedName]resourceapi.DeviceAttribute{
		gpuapi.AttrType:                  {StringValue: ptr.To(string(d.Kind))},
		gpuapi.AttrProductName:           {StringValue: ptr.To(gpu.ProductName)},
		gpuapi.AttrBrand:                 {StringValue: ptr.To(gpu.Brand)},
		gpuapi.AttrArchitecture:          {StringValue: ptr.To(gpu.Architecture)},
		gpuapi.AttrCUDAComputeCapability: {VersionValue: ptr.To(semver(gpu.CUDAComputeCapability))},
		gpuapi.AttrDriverVersion:         {VersionValue: ptr.To(semver(node.DriverVersion))},
		gpuapi.AttrCUDADriverVersion:     {VersionValue: ptr.To(semver(node.CUDADriverVersion))},
		gpuapi.AttrIndex:                 {IntValue: ptr.To(int64(gpu.Index))},
		gpuapi.AttrMinor:                 {IntValue: ptr.To(int64(gpu.Minor))},
		gpuapi.AttrPool:                  {StringValue: ptr.To(opts.Pool)},
	}
	if gpu.PCIBusID != "" {
		attrs[deviceattribute.StandardDeviceAttributePCIBusID] = resourceapi.DeviceAttribute{StringValue: ptr.To(gpu.PCIBusID)}
	}
	if gpu.PCIeRoot != "" {
		attrs[deviceattribute.StandardDeviceAttributePCIeRoot] = resourceapi.DeviceAttribute{StringValue: ptr.To(gpu.PCIeRoot)}
	}
	capacity := map[resourceapi.QualifiedName]resourceapi.DeviceCapacity{}
	out := resourceapi.Device{
		Name:                     d.Name,
		BindingConditions:        opts.BindingConditions,
		BindingFailureConditions: opts.BindingFailureConditions,
	}

	switch d.Kind {
	case partition.KindGPU:
		attrs[gpuapi.AttrUUID] = resourceapi.DeviceAttribute{StringValue: ptr.To(gpu.UUID)}
		capacity[gpuapi.CapMemory] = quantity(int64(gpu.MemoryBytes), resource.BinarySI)
		if gpu.Multiprocessors > 0 {
			capacity[gpuapi.CapMultiprocessors] = quantity(int64(gpu.Multiprocessors), resource.DecimalSI)
		}
	case partition.KindShared:
		attrs[gpuapi.AttrUUID] = resourceapi.DeviceAttribute{StringValue: ptr.To(gpu.UUID)}
		memory := resource.NewQuantity(int64(gpu.MemoryBytes), resource.BinarySI)
		capacity[gpuapi.CapMemory] = resourceapi.DeviceCapacity{
			Value: *memory,
			RequestPolicy: &resourceapi.CapacityRequestPolicy{
				Default:    ptr.To(shareMemoryDefault),
				ValidRange: &resourceapi.CapacityRequestPolicyRange{Min: ptr.To(shareMemoryStep), Max: memory, Step: ptr.To(shareMemoryStep)},
			},
		}
		capacity[gpuapi.CapCompute] = resourceapi.DeviceCapacity{
			Value: shareComputeMax,
			RequestPolicy: &resourceapi.CapacityRequestPolicy{
				Default:    ptr.To(shareComputeDflt),
				ValidRange: &resourceapi.CapacityRequestPolicyRange{Min: ptr.To(shareComputeMin), Max: ptr.To(shareComputeMax), Step: ptr.To(shareComputeStep)},
			},
		}
		out.AllowMultipleAllocations = ptr.To(true)
	case partition.KindMIG:
		p := d.Profile
		attrs[gpuapi.AttrParentUUID] = resourceapi.DeviceAttribute{StringValue: ptr.To(gpu.UUID)}
		attrs[gpuapi.AttrProfile] = resourceapi.DeviceAttribute{StringValue: ptr.To(p.Name)}
		attrs[gpuapi.AttrPlacementStart] = resourceapi.DeviceAttribute{IntValue: ptr.To(int64(d.Placement.Start))}
		attrs[gpuapi.AttrPlacementSize] = resourceapi.DeviceAttribute{IntValue: ptr.To(int64(d.Placement.Size))}
		capacity[gpuapi.CapMemory] = quantity(int64(p.MemoryBytes), resource.BinarySI)
		capacity[gpuapi.CapMultiprocessors] = quantity(int64(p.Multiprocessors), resource.DecimalSI)
		capacity[gpuapi.CapCopyEngines] = quantity(int64(p.CopyEngines), resource.DecimalSI)
		capacity[gpuapi.CapDecoders] = quantity(int64(p.Decoders), resource.DecimalSI)
		capacity[gpuapi.CapEncoders] = quantity(int64(p.Encoders), resource.DecimalSI)
		capacity[gpuapi.CapJPEGEngines] = quantity(int64(p.JPEGEngines), resource.DecimalSI)
		capacity[gpuapi.CapOFAEngines] = quantity(int64(p.OFAEngines), resource.DecimalSI)
	}
	out.Attributes = attrs
	out.Capacity = capacity
	out.ConsumesCounters = []resourceapi.DeviceCounterConsumption{{CounterSet: g.CounterSet, Counters: counters(d.Consumes)}}
	if taints := opts.Taints[d.Name]; len(taints) > 0 {
		out.Taints = taints
	}
	return out
}

func quantity(v int64, format resource.Format) resourceapi.DeviceCapacity {
	return resourceapi.DeviceCapacity{Value: *resource.NewQuantity(v, format)}
}

// semver pads "12.4" to "12.4.0" so that version attributes parse as
// semantic versions, which CEL's semver comparisons need.
func semver(v string) string {
	parts := strings.Split(v, ".")
	for len(parts) < 3 {
		parts = append(parts, "0")
	}
	return strings.Join(parts, ".")
}

// Objects renders DriverResources as the ResourceSlice objects the
// publication controller would create, named deterministically
// "<pool>-<driver>-<index>", for printing and for tests that feed the
// allocator directly. The index is zero-padded: the allocator tries a pool's
// slices in name order, and the publication controller's names (an index
// prefix of fixed width) sort in slice order too.
func Objects(nodeName string, res draslices.DriverResources) []*resourceapi.ResourceSlice {
	var out []*resourceapi.ResourceSlice
	for poolName, pool := range res.Pools {
		for i, s := range pool.Slices {
			slice := &resourceapi.ResourceSlice{
				TypeMeta:   metav1.TypeMeta{APIVersion: resourceapi.SchemeGroupVersion.String(), Kind: "ResourceSlice"},
				ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s-%s-%05d", poolName, strings.ReplaceAll(gpuapi.DriverName, ".", "-"), i)},
				Spec: resourceapi.ResourceSliceSpec{
					Driver:         gpuapi.DriverName,
					Pool:           resourceapi.ResourcePool{Name: poolName, Generation: pool.Generation, ResourceSliceCount: int64(len(pool.Slices))},
					NodeName:       ptr.To(nodeName),
					Devices:        s.Devices,
					SharedCounters: s.SharedCounters,
				},
			}
			out = append(out, slice)
		}
	}
	return out
}
