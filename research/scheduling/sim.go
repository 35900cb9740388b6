// Package scheduling runs the allocator that lives inside kube-scheduler
// (k8s.io/dynamic-resource-allocation/structured) over the slices Tessera
// publishes, to prove that whatever it allocates the hardware can create, and
// to measure its cost and how well Tessera's device order packs MIG requests.
package scheduling

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/dynamic-resource-allocation/cel"
	"k8s.io/dynamic-resource-allocation/structured"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	chart "github.com/tessera-gpu/tessera/deployments/helm/tessera"
	"github.com/tessera-gpu/tessera/internal/allocation"
	"github.com/tessera-gpu/tessera/internal/testing/builder"
)

// Features are the DRA features kube-scheduler 1.37 enables by default and
// that Tessera's slices rely on (the reclaim controller's too).
var Features = allocation.Features

// Classes are the DeviceClasses Tessera ships, decoded from the same manifest
// the local cluster installs, so that the allocator here selects devices
// exactly as the installed classes do.
var Classes = mustLoadClasses()

func mustLoadClasses() classLister {
	classes, err := chart.DeviceClassObjects()
	if err != nil {
		panic(err)
	}
	out := classLister{}
	for _, dc := range classes {
		out[dc.Name] = dc
	}
	for _, name := range gpuapi.Classes {
		if out[name] == nil {
			panic(fmt.Sprintf("the chart's DeviceClasses lack %s", name))
		}
	}
	return out
}

type classLister map[string]*resourceapi.DeviceClass

// allocatorClasses are the classes the allocator here knows: Tessera's and
// those of the other layouts the benchmarks compare.
var allocatorClasses = func() classLister {
	out := classLister{}
	for name, dc := range Classes {
		out[name] = dc
	}
	for _, dc := range nvidiaClasses {
		out[dc.Name] = dc
	}
	return out
}()

func (c classLister) List() ([]*resourceapi.DeviceClass, error) {
	out := make([]*resourceapi.DeviceClass, 0, len(c))
	for _, dc := range c {
		out = append(out, dc)
	}
	return out, nil
}

func (c classLister) Get(name string) (*resourceapi.DeviceClass, error) {
	if dc, ok := c[name]; ok {
		return dc, nil
	}
	return nil, fmt.Errorf("device class %s not found", name)
}

// Cluster holds published slices and what is allocated, as the scheduler
// tracks it between claims.
type Cluster struct {
	Slices  []*resourceapi.ResourceSlice
	Nodes   []*corev1.Node
	state   structured.AllocatedState
	claims  map[types.UID]*resourceapi.ResourceClaim
	cel     *cel.Cache
	timeout time.Duration
}

// NewCluster returns a cluster of the given nodes and slices.
func NewCluster(nodes []string, slices []*resourceapi.ResourceSlice) *Cluster {
	c := &Cluster{
		Slices:  slices,
		state:   allocation.NewState(),
		claims:  map[types.UID]*resourceapi.ResourceClaim{},
		cel:     cel.NewCache(100, cel.Features{EnableConsumableCapacity: true}),
		timeout: 10 * time.Second,
	}
	for _, n := range nodes {
		c.Nodes = append(c.Nodes, builder.MakeNode(n).Obj())
	}
	return c
}

// Allocate tries the claim on each node in turn, as the scheduler's filter
// would, and records the first allocation found. It returns nil when no node
// fits. The allocator gets a deadline: it backtracks without end when
// claims cannot fit.
func (c *Cluster) Allocate(ctx context.Context, claim *resourceapi.ResourceClaim) (*resourceapi.AllocationResult, error) {
	return c.allocate(ctx, claim, c.Nodes)
}

// AllocateOn is Allocate restricted to one node.
func (c *Cluster) AllocateOn(ctx context.Context, node int, claim *resourceapi.ResourceClaim) (*resourceapi.AllocationResult, error) {
	return c.allocate(ctx, claim, c.Nodes[node:node+1])
}

func (c *Cluster) allocate(ctx context.Context, claim *resourceapi.ResourceClaim, nodes []*corev1.Node) (*resourceapi.AllocationResult, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	alloc, err := structured.NewAllocator(ctx, Features, c.state, allocatorClasses, c.Slices, c.cel)
	if err != nil {
		return nil, err
	}
	for _, node := range nodes {
		results, err := alloc.Allocate(ctx, node, []*resourceapi.ResourceClaim{claim})
		if err != nil {
			return nil, fmt.Errorf("allocate claim %s on %s: %w", claim.Name, node.Name, err)
		}
		if len(results) == 1 {
			c.record(claim, &results[0])
			return &results[0], nil
		}
	}
	return nil, nil
}

// Filter runs the allocator for the claim on every node without recording
// anything, as kube-scheduler's filter phase does, and returns on how many
// nodes it fits.
func (c *Cluster) Filter(ctx context.Context, claim *resourceapi.ResourceClaim) (int, error) {
	return c.filter(ctx, claim, c.Nodes)
}

func (c *Cluster) filter(ctx context.Context, claim *resourceapi.ResourceClaim, nodes []*corev1.Node) (int, error) {
	alloc, err := structured.NewAllocator(ctx, Features, c.state, allocatorClasses, c.Slices, c.cel)
	if err != nil {
		return 0, err
	}
	fit := 0
	for _, node := range nodes {
		// A deadline per node, as kube-scheduler's filter has.
		nodeCtx, cancel := context.WithTimeout(ctx, c.timeout)
		results, err := alloc.Allocate(nodeCtx, node, []*resourceapi.ResourceClaim{claim})
		cancel()
		if err != nil {
			return fit, fmt.Errorf("allocate claim %s on %s: %w", claim.Name, node.Name, err)
		}
		if len(results) == 1 {
			fit++
		}
	}
	return fit, nil
}

func (c *Cluster) record(claim *resourceapi.ResourceClaim, result *resourceapi.AllocationResult) {
	claim = claim.DeepCopy()
	claim.Status.Allocation = result
	c.claims[claim.UID] = claim
	allocation.Record(c.state, result)
}

// Free deallocates a claim.
func (c *Cluster) Free(uid types.UID) {
	claim, ok := c.claims[uid]
	if !ok {
		return
	}
	delete(c.claims, uid)
	for _, r := range claim.Status.Allocation.Devices.Results {
		id := structured.MakeDeviceID(r.Driver, r.Pool, r.Device)
		if r.ShareID != nil {
			c.state.AllocatedSharedDeviceIDs.Delete(structured.MakeSharedDeviceID(id, r.ShareID))
			c.state.AggregatedCapacity.Remove(structured.NewDeviceConsumedCapacity(id, r.ConsumedCapacity))
			continue
		}
		c.state.AllocatedDevices.Delete(id)
	}
}

// Claims returns the allocated claims.
func (c *Cluster) Claims() map[types.UID]*resourceapi.ResourceClaim { return c.claims }

// Claims the tests and benchmarks draw from, built with internal/testing/builder.

var claimSeq int

// newClaim names each claim uniquely within the process. Requests built by
// hand (mix.go's, per layout) get the API server's defaults (exact count 1)
// that the allocator relies on, as builder.MakeRequest's already have.
func newClaim(requests ...resourceapi.DeviceRequest) *resourceapi.ResourceClaim {
	for i := range requests {
		if r := requests[i].Exactly; r != nil && r.AllocationMode == "" {
			r.AllocationMode = resourceapi.DeviceAllocationModeExactCount
			r.Count = max(r.Count, 1)
		}
		for j := range requests[i].FirstAvailable {
			if r := &requests[i].FirstAvailable[j]; r.AllocationMode == "" {
				r.AllocationMode = resourceapi.DeviceAllocationModeExactCount
				r.Count = max(r.Count, 1)
			}
		}
	}
	claimSeq++
	return builder.MakeClaim(fmt.Sprintf("claim-%d", claimSeq)).Request(requests...).Obj()
}

// WholeGPU asks for one whole GPU.
func WholeGPU() *resourceapi.ResourceClaim {
	return newClaim(builder.MakeRequest("gpu", gpuapi.ClassGPU).Obj())
}

// MIG asks for count partitions of a profile.
func MIG(profile string, count int64) *resourceapi.ResourceClaim {
	return newClaim(builder.MakeRequest("mig", gpuapi.ClassMIG).Profile(profile).Count(count).Obj())
}

// MIGAt asks for the partition of a profile at one placement.
func MIGAt(profile string, start int) *resourceapi.ResourceClaim {
	return newClaim(builder.MakeRequest("mig", gpuapi.ClassMIG).Profile(profile).PlacementStart(start).Obj())
}

// Share asks for a share of a time-shared GPU.
func Share(memory string, compute int64) *resourceapi.ResourceClaim {
	return newClaim(builder.MakeRequest("share", gpuapi.ClassShared).Memory(memory).Compute(compute).Obj())
}

// MIGOrShare prefers a MIG partition and falls back to a share.
func MIGOrShare(profile, memory string, compute int64) *resourceapi.ResourceClaim {
	return newClaim(builder.FirstAvailable("gpu",
		builder.MakeRequest("mig", gpuapi.ClassMIG).Profile(profile),
		builder.MakeRequest("share", gpuapi.ClassShared).Memory(memory).Compute(compute),
	))
}

// shareCapacity is the capacity request of a share, for requests of classes
// other than Tessera's shipped ones.
func shareCapacity(memory string, compute int64) *resourceapi.CapacityRequirements {
	return builder.MakeRequest("share", "").Memory(memory).Compute(compute).Obj().Exactly.Capacity
}
