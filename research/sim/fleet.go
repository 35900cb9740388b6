package sim

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/dynamic-resource-allocation/cel"
	"k8s.io/dynamic-resource-allocation/structured"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/pkg/inventory"
	"github.com/tessera-gpu/tessera/pkg/placement"
	"github.com/tessera-gpu/tessera/pkg/resourceslice"
	"github.com/tessera-gpu/tessera/research/scheduling"
)

// gpuMemoryGiB is the framebuffer of the trace's GPU models. It only sizes
// the memory capacity of the time-shared GPU: a share's memory request is
// proportional to its compute share, so the size never decides a placement.
// G2 and G3 are undisclosed models; unknown models get 16 GiB.
var gpuMemoryGiB = map[string]uint64{"P100": 16, "T4": 16, "V100M16": 16, "V100M32": 32, "A10": 24, "G2": 32, "G3": 32}

// shareMemoryStep is the step of the shared GPU's memory request policy.
const shareMemoryStep = 256 << 20

// Fleet is the published side of the cluster: every node's ResourceSlices,
// exactly as Tessera's kubelet plugin builds them. It is read-only and shared
// by concurrent runs.
type Fleet struct {
	Specs  []NodeSpec
	nodes  []*corev1.Node
	slices [][]*resourceapi.ResourceSlice
	memory []uint64
	// device maps each node's device names to GPU index.
	device []map[string]int
	cel    *cel.Cache
	// Capacity is the fleet's GPUs in milli-GPUs.
	Capacity int64
}

// NewFleet publishes slices for every node: whole and time-shared GPUs
// (the trace's GPU models have no MIG).
func NewFleet(specs []NodeSpec) *Fleet {
	f := &Fleet{Specs: specs, cel: cel.NewCache(100, cel.Features{EnableConsumableCapacity: true})}
	for _, s := range specs {
		mem := gpuMemoryGiB[s.Model]
		if mem == 0 {
			mem = 16
		}
		inv := inventory.Node{DriverVersion: "550.54.15", CUDADriverVersion: "12.4"}
		names := map[string]int{}
		for i := range s.GPUs {
			inv.GPUs = append(inv.GPUs, inventory.GPU{
				Index: i, Minor: i, UUID: fmt.Sprintf("GPU-%s-%d", s.Name, i), ProductName: s.Model,
				Brand: "nvidia", Architecture: "unknown", CUDAComputeCapability: "7.0", MemoryBytes: mem << 30,
			})
			names[gpuapi.WholeDeviceName(i)] = i
			names[gpuapi.SharedDeviceName(i)] = i
		}
		var slices []*resourceapi.ResourceSlice
		if s.GPUs > 0 {
			slices = resourceslice.Objects(s.Name, resourceslice.Build(s.Name, inv, resourceslice.Options{Pool: "default"}))
		}
		f.nodes = append(f.nodes, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: s.Name}})
		f.slices = append(f.slices, slices)
		f.memory = append(f.memory, mem<<30)
		f.device = append(f.device, names)
		f.Capacity += int64(s.GPUs) * placement.WholeGPU
	}
	return f
}

// state is what one run has allocated on one node: the allocator's view
// (devices and consumed capacity) and the placement package's view, kept in
// step from the allocator's results.
type state struct {
	allocated structured.AllocatedState
	node      placement.Node
	// gen changes whenever the node does, to invalidate cached scores.
	gen int
	// held, when not nil, keeps each allocation's results by pod uid, so
	// that the timeline can release them.
	held map[int][]resourceapi.DeviceRequestAllocationResult
}

func (f *Fleet) newStates() []state {
	out := make([]state, len(f.Specs))
	for i, s := range f.Specs {
		out[i] = state{
			allocated: structured.AllocatedState{
				AllocatedDevices:         sets.New[structured.DeviceID](),
				AllocatedSharedDeviceIDs: sets.New[structured.SharedDeviceID](),
				AggregatedCapacity:       structured.NewConsumedCapacityCollection(),
			},
			node: placement.Node{CPU: s.CPU, Memory: s.Memory, Free: make([]int, s.GPUs), Model: s.Model},
		}
		for g := range out[i].node.Free {
			out[i].node.Free[g] = placement.WholeGPU
		}
	}
	return out
}

// claim builds the ResourceClaim a pod of the request would carry: a share
// of a time-shared GPU, with memory in proportion to compute, or whole GPUs.
func (f *Fleet) claim(node int, uid int, r placement.Request, pin []int) *resourceapi.ResourceClaim {
	name := "claim-" + strconv.Itoa(uid)
	req := resourceapi.DeviceRequest{Name: "gpu", Exactly: &resourceapi.ExactDeviceRequest{
		DeviceClassName: gpuapi.ClassGPU, AllocationMode: resourceapi.DeviceAllocationModeExactCount, Count: int64(r.GPUs),
	}}
	if r.Shared() {
		memory := int64(f.memory[node]) * int64(r.Milli) / placement.WholeGPU / shareMemoryStep * shareMemoryStep
		req.Exactly.DeviceClassName = gpuapi.ClassShared
		req.Exactly.Capacity = &resourceapi.CapacityRequirements{Requests: map[resourceapi.QualifiedName]resource.Quantity{
			gpuapi.CapMemory:  *resource.NewQuantity(max(memory, shareMemoryStep), resource.BinarySI),
			gpuapi.CapCompute: *resource.NewQuantity(int64(r.Milli/10), resource.DecimalSI),
		}}
		if len(pin) == 1 {
			req.Exactly.Selectors = []resourceapi.DeviceSelector{{CEL: &resourceapi.CELDeviceSelector{
				Expression: fmt.Sprintf(`device.attributes[%q].%s == %d`, gpuapi.DriverName, gpuapi.AttrIndex, pin[0]),
			}}}
		}
	}
	return &resourceapi.ResourceClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", UID: types.UID(name)},
		Spec:       resourceapi.ResourceClaimSpec{Devices: resourceapi.DeviceClaim{Requests: []resourceapi.DeviceRequest{req}}},
	}
}

// allocate runs kube-scheduler's allocator for the request on one node and
// records the result. It returns the GPUs allocated, nil when the allocator
// finds no fit. pin, when it names one GPU, restricts a share to it. Only the node's own slices and allocations are passed: the
// allocator looks at nothing else for a node-local pool, and the scheduler's
// cost of walking every allocated share of the cluster (see docs/design.md) would
// only slow the simulation down without changing a decision.
func (f *Fleet) allocate(ctx context.Context, st []state, node, uid int, r placement.Request, pin []int) ([]int, error) {
	s := &st[node]
	if r.GPUs == 0 {
		s.node = s.node.With(r, nil)
		s.gen++
		return []int{}, nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	alloc, err := structured.NewAllocator(ctx, scheduling.Features, s.allocated, scheduling.Classes, f.slices[node], f.cel)
	if err != nil {
		return nil, fmt.Errorf("new allocator for %s: %w", f.Specs[node].Name, err)
	}
	claim := f.claim(node, uid, r, pin)
	results, err := alloc.Allocate(ctx, f.nodes[node], []*resourceapi.ResourceClaim{claim})
	if err != nil {
		return nil, fmt.Errorf("allocate %s on %s: %w", claim.Name, f.Specs[node].Name, err)
	}
	if len(results) == 0 {
		return nil, nil
	}
	var gpus []int
	for _, res := range results[0].Devices.Results {
		id := structured.MakeDeviceID(res.Driver, res.Pool, res.Device)
		g, ok := f.device[node][res.Device]
		if !ok {
			return nil, fmt.Errorf("allocate %s on %s: unknown device %s", claim.Name, f.Specs[node].Name, res.Device)
		}
		gpus = append(gpus, g)
		if res.ShareID != nil {
			s.allocated.AllocatedSharedDeviceIDs.Insert(structured.MakeSharedDeviceID(id, res.ShareID))
			s.allocated.AggregatedCapacity.Insert(structured.NewDeviceConsumedCapacity(id, res.ConsumedCapacity))
			continue
		}
		s.allocated.AllocatedDevices.Insert(id)
	}
	if s.held != nil {
		s.held[uid] = results[0].Devices.Results
	}
	s.node = s.node.With(r, gpus)
	s.gen++
	return gpus, nil
}

// modelAllows reports whether the pod may run on the node's GPU model.
func modelAllows(p Pod, spec NodeSpec) bool {
	if len(p.Models) == 0 || p.Request.GPUs == 0 {
		return true
	}
	for _, m := range p.Models {
		if strings.EqualFold(m, spec.Model) {
			return true
		}
	}
	return false
}
