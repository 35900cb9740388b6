// Package allocation runs the allocator that lives inside kube-scheduler
// (k8s.io/dynamic-resource-allocation/structured) outside the scheduler: on
// slices and allocations that a caller builds, to ask whether claims would
// fit. The test proofs (research/scheduling), the simulator and the reclaim
// controller share it, so that all of them decide as kube-scheduler 1.37
// does.
package allocation

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/dynamic-resource-allocation/cel"
	"k8s.io/dynamic-resource-allocation/structured"
)

// Features are the DRA features kube-scheduler 1.37 enables by default and
// that Tessera's slices rely on.
var Features = structured.Features{
	AdminAccess:            true,
	PrioritizedList:        true,
	PartitionableDevices:   true,
	DeviceTaints:           true,
	DeviceBindingAndStatus: true,
	ConsumableCapacity:     true,
}

// NodeTimeout is how long the allocator may search one node for a set of
// claims, as kube-scheduler's filter allows: it backtracks without end when
// claims cannot all fit, so every call gets a deadline.
const NodeTimeout = 10 * time.Second

// Classes lists DeviceClasses by name for the allocator.
type Classes map[string]*resourceapi.DeviceClass

// NewClasses indexes classes by name.
func NewClasses(classes []*resourceapi.DeviceClass) Classes {
	out := Classes{}
	for _, dc := range classes {
		out[dc.Name] = dc
	}
	return out
}

// List returns every class.
func (c Classes) List() ([]*resourceapi.DeviceClass, error) {
	out := make([]*resourceapi.DeviceClass, 0, len(c))
	for _, dc := range c {
		out = append(out, dc)
	}
	return out, nil
}

// Get returns the class of that name.
func (c Classes) Get(name string) (*resourceapi.DeviceClass, error) {
	if dc, ok := c[name]; ok {
		return dc, nil
	}
	return nil, fmt.Errorf("device class %s not found", name)
}

// NewState returns an allocated state with nothing allocated.
func NewState() structured.AllocatedState {
	return structured.AllocatedState{
		AllocatedDevices:         sets.New[structured.DeviceID](),
		AllocatedSharedDeviceIDs: sets.New[structured.SharedDeviceID](),
		AggregatedCapacity:       structured.NewConsumedCapacityCollection(),
	}
}

// Record enters an allocation into state, as the scheduler tracks it: a
// whole device as allocated, a share by its share ID and consumed capacity.
func Record(state structured.AllocatedState, result *resourceapi.AllocationResult) {
	for _, r := range result.Devices.Results {
		id := structured.MakeDeviceID(r.Driver, r.Pool, r.Device)
		if r.ShareID != nil {
			state.AllocatedSharedDeviceIDs.Insert(structured.MakeSharedDeviceID(id, r.ShareID))
			state.AggregatedCapacity.Insert(structured.NewDeviceConsumedCapacity(id, r.ConsumedCapacity))
			continue
		}
		state.AllocatedDevices.Insert(id)
	}
}

// Allocator answers, for one set of slices and allocations, whether claims
// fit a node.
type Allocator struct {
	alloc structured.Allocator
}

// New returns an allocator over slices with state allocated. cache may be
// shared between calls (nil: a new one).
func New(ctx context.Context, state structured.AllocatedState, classes Classes, slices []*resourceapi.ResourceSlice, cache *cel.Cache) (*Allocator, error) {
	if cache == nil {
		cache = cel.NewCache(100, cel.Features{EnableConsumableCapacity: true})
	}
	alloc, err := structured.NewAllocator(ctx, Features, state, classes, slices, cache)
	if err != nil {
		return nil, fmt.Errorf("new allocator: %w", err)
	}
	return &Allocator{alloc: alloc}, nil
}

// Allocate allocates claims together on node, within NodeTimeout, and
// returns their results in order; nil when they do not fit.
func (a *Allocator) Allocate(ctx context.Context, node *corev1.Node, claims []*resourceapi.ResourceClaim) ([]resourceapi.AllocationResult, error) {
	ctx, cancel := context.WithTimeout(ctx, NodeTimeout)
	defer cancel()
	results, err := a.alloc.Allocate(ctx, node, claims)
	if err != nil {
		return nil, fmt.Errorf("allocate on node %s: %w", node.Name, err)
	}
	if len(results) != len(claims) {
		return nil, nil
	}
	return results, nil
}
