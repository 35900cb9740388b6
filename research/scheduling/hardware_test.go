package scheduling

import (
	"context"
	"fmt"
	"testing"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tnvml "github.com/tessera-gpu/tessera/internal/nvml"
	"github.com/tessera-gpu/tessera/internal/nvml/nvmlmock"
	"github.com/tessera-gpu/tessera/pkg/inventory"
	"github.com/tessera-gpu/tessera/pkg/partition"
	"github.com/tessera-gpu/tessera/pkg/resourceslice"
)

// hardware mirrors allocations onto an accurate mock NVML server and checks
// the invariants the scheduler must never break.
type hardware struct {
	t       *testing.T
	server  *nvmlmock.Server
	lib     tnvml.Library
	node    inventory.Node
	devices map[string]placedDevice
	gpus    []gpuUse
	// owned maps claims to the GPU instances created for them.
	owned map[types.UID][]migInstance
}

type placedDevice struct {
	gpu    int
	device partition.Device
}

type migInstance struct{ gpu, id int }

type gpuUse struct {
	whole         bool
	mig           int
	shares        int
	memory, compt int64
}

func newHardware(t *testing.T, model string, gpus int) (*hardware, *Cluster) {
	t.Helper()
	h, c := newHardwareTB(t, model, gpus)
	h.t = t
	return h, c
}

func newHardwareTB(t testing.TB, model string, gpus int) (*hardware, *Cluster) {
	t.Helper()
	s, err := nvmlmock.New(model, gpus, "n1")
	if err != nil {
		t.Fatal(err)
	}
	lib, err := tnvml.OpenMock(s)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	node, err := lib.Discover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	h := &hardware{server: s, lib: lib, node: node, devices: map[string]placedDevice{},
		gpus: make([]gpuUse, gpus), owned: map[types.UID][]migInstance{}}
	for _, gpu := range node.GPUs {
		for _, d := range partition.Build(gpu, partition.Options{}).Devices {
			h.devices[d.Name] = placedDevice{gpu: gpu.Index, device: d}
		}
		if !gpu.MIG.Enabled {
			// The plugin switches MIG on when it prepares the first partition.
			if err := lib.SetMIGMode(ctx, gpu.Index, true); err != nil {
				t.Fatal(err)
			}
		}
	}
	slices := resourceslice.Objects("n1", resourceslice.Build("n1", node, resourceslice.Options{Pool: "default"}))
	return h, NewCluster([]string{"n1"}, slices)
}

// apply checks an allocation against the hardware and creates its MIG
// partitions on the mock, which refuses anything the GPU would refuse.
func (h *hardware) apply(claim *resourceapi.ResourceClaim, result *resourceapi.AllocationResult) {
	h.t.Helper()
	if err := h.check(claim, result); err != nil {
		h.t.Fatal(err)
	}
}

// check is apply returning the first broken invariant instead of failing.
func (h *hardware) check(claim *resourceapi.ResourceClaim, result *resourceapi.AllocationResult) error {
	for _, r := range result.Devices.Results {
		d, ok := h.devices[r.Device]
		if !ok {
			return fmt.Errorf("claim %s got unknown device %s", claim.Name, r.Device)
		}
		use := &h.gpus[d.gpu]
		switch d.device.Kind {
		case partition.KindGPU:
			if use.whole || use.mig > 0 || use.shares > 0 {
				return fmt.Errorf("claim %s got whole GPU %d while it is in use: %+v", claim.Name, d.gpu, *use)
			}
			use.whole = true
		case partition.KindShared:
			if use.whole || use.mig > 0 {
				return fmt.Errorf("claim %s got a share of GPU %d while it is whole or partitioned: %+v", claim.Name, d.gpu, *use)
			}
			mem := r.ConsumedCapacity[gpuapi.CapMemory]
			cpu := r.ConsumedCapacity[gpuapi.CapCompute]
			use.shares++
			use.memory += mem.Value()
			use.compt += cpu.Value()
			if use.memory > int64(h.node.GPUs[d.gpu].MemoryBytes) || use.compt > 100 {
				return fmt.Errorf("shares of GPU %d exceed its capacity: memory %d of %d, compute %d of 100",
					d.gpu, use.memory, h.node.GPUs[d.gpu].MemoryBytes, use.compt)
			}
		case partition.KindMIG:
			if use.whole || use.shares > 0 {
				return fmt.Errorf("claim %s got MIG %s while GPU %d is whole or shared: %+v", claim.Name, r.Device, d.gpu, *use)
			}
			m, err := h.lib.CreateMIGDevice(context.Background(), d.gpu, d.device.Profile.ID, d.device.Placement)
			if err != nil {
				return fmt.Errorf("claim %s: scheduler allocated %s, which the GPU cannot create: %w", claim.Name, r.Device, err)
			}
			use.mig++
			h.owned[claim.UID] = append(h.owned[claim.UID], migInstance{d.gpu, m.GPUInstanceID})
		}
	}
	return nil
}

// release undoes apply for a claim being freed.
func (h *hardware) release(claim *resourceapi.ResourceClaim) {
	h.t.Helper()
	for _, r := range claim.Status.Allocation.Devices.Results {
		d := h.devices[r.Device]
		use := &h.gpus[d.gpu]
		switch d.device.Kind {
		case partition.KindGPU:
			use.whole = false
		case partition.KindShared:
			mem := r.ConsumedCapacity[gpuapi.CapMemory]
			cpu := r.ConsumedCapacity[gpuapi.CapCompute]
			use.shares--
			use.memory -= mem.Value()
			use.compt -= cpu.Value()
		case partition.KindMIG:
			use.mig--
		}
	}
	for _, m := range h.owned[claim.UID] {
		if err := h.lib.DestroyMIGDevice(context.Background(), m.gpu, m.id); err != nil {
			h.t.Fatalf("destroy MIG instance %d on GPU %d: %v", m.id, m.gpu, err)
		}
	}
	delete(h.owned, claim.UID)
}

// instances counts the GPU instances on the mock.
func (h *hardware) instances(gpu int) int {
	return len(h.server.GPU(gpu).Instances)
}

func (h *hardware) String() string { return fmt.Sprintf("%+v", h.gpus) }
