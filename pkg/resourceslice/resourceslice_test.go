package resourceslice_test

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/utils/ptr"

	"github.com/tessera-gpu/tessera/pkg/inventory"
	"github.com/tessera-gpu/tessera/pkg/partition"
	"github.com/tessera-gpu/tessera/pkg/resourceslice"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
)

func node(gpus int) inventory.Node {
	n := inventory.Node{DriverVersion: "550.54.15", CUDADriverVersion: "12.4"}
	for i := range gpus {
		n.GPUs = append(n.GPUs, inventory.GPU{
			Index: i, Minor: i, UUID: fmt.Sprintf("GPU-%d", i), ProductName: "NVIDIA H200", Brand: "nvidia",
			Architecture: "hopper", CUDAComputeCapability: "9.0", MemoryBytes: 141 << 30, Multiprocessors: 132,
			PCIBusID: fmt.Sprintf("0000:%02x:00.0", i+1),
			MIG: inventory.MIG{Capable: true, ToggleWithoutReset: true, Profiles: []inventory.MIGProfile{
				{ID: 0, Name: "1g.18gb", SliceCount: 1, InstanceCount: 7, MemoryBytes: 18 << 30, Multiprocessors: 16, Decoders: 1, Placements: starts(1, 0, 1, 2, 3, 4, 5, 6)},
				{ID: 2, Name: "3g.71gb", SliceCount: 3, InstanceCount: 2, MemoryBytes: 71 << 30, Multiprocessors: 60, Decoders: 3, Placements: starts(4, 0, 4)},
				{ID: 4, Name: "7g.141gb", SliceCount: 7, InstanceCount: 1, MemoryBytes: 141 << 30, Multiprocessors: 132, Decoders: 7, OFAEngines: 1, Placements: starts(8, 0)},
				{ID: 7, Name: "1g.18gb+me", SliceCount: 1, InstanceCount: 1, MemoryBytes: 18 << 30, Multiprocessors: 16, Decoders: 1, OFAEngines: 1, Placements: starts(1, 0, 1, 2, 3, 4, 5, 6)},
			}},
		})
	}
	return n
}

func starts(size int, s ...int) []inventory.Placement {
	var out []inventory.Placement
	for _, start := range s {
		out = append(out, inventory.Placement{Start: start, Size: size})
	}
	return out
}

func TestLayoutRespectsAPILimits(t *testing.T) {
	for _, gpus := range []int{1, 2, 3, 8, 9, 16} {
		t.Run(fmt.Sprintf("%d GPUs", gpus), func(t *testing.T) {
			res := resourceslice.Build("n1", node(gpus), resourceslice.Options{Pool: "default"})
			if len(res.Pools) != 1 {
				t.Fatalf("%d pools, want 1 named after the node", len(res.Pools))
			}
			pool := res.Pools["n1"]
			sets, devices := map[string]bool{}, map[string]bool{}
			for i, s := range pool.Slices {
				if len(s.SharedCounters) > 0 && len(s.Devices) > 0 {
					t.Errorf("slice %d mixes counter sets and devices", i)
				}
				if len(s.SharedCounters) > resourceapi.ResourceSliceMaxCounterSets {
					t.Errorf("slice %d has %d counter sets", i, len(s.SharedCounters))
				}
				if len(s.Devices) > resourceapi.ResourceSliceMaxDevicesWithAdvancedFeatures {
					t.Errorf("slice %d has %d devices", i, len(s.Devices))
				}
				for _, cs := range s.SharedCounters {
					sets[cs.Name] = true
					if len(cs.Counters) > resourceapi.ResourceSliceMaxCountersPerCounterSet {
						t.Errorf("counter set %s has %d counters", cs.Name, len(cs.Counters))
					}
				}
				for _, d := range s.Devices {
					if devices[d.Name] {
						t.Errorf("device %s published twice", d.Name)
					}
					devices[d.Name] = true
					for _, c := range d.ConsumesCounters {
						if !sets[c.CounterSet] {
							t.Errorf("device %s consumes unknown or later counter set %s", d.Name, c.CounterSet)
						}
					}
				}
			}
			// 1 whole + 1 shared + 7 + 2 + 1 + 7 MIG per GPU.
			if want := gpus * 19; len(devices) != want {
				t.Errorf("%d devices, want %d", len(devices), want)
			}
			if len(sets) != gpus {
				t.Errorf("%d counter sets, want %d", len(sets), gpus)
			}
		})
	}
}

func TestSameInventorySameBytes(t *testing.T) {
	render := func() []byte {
		var buf bytes.Buffer
		res := resourceslice.Build("n1", node(8), resourceslice.Options{Pool: "default"})
		if err := resourceslice.WriteYAML(&buf, resourceslice.Objects("n1", res)); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	first := render()
	for range 10 {
		if !bytes.Equal(first, render()) {
			t.Fatal("rendering the same inventory twice gave different bytes")
		}
	}
}

func find(t *testing.T, res []*resourceapi.ResourceSlice, name string) resourceapi.Device {
	t.Helper()
	for _, s := range res {
		for _, d := range s.Spec.Devices {
			if d.Name == name {
				return d
			}
		}
	}
	t.Fatalf("device %s not published", name)
	return resourceapi.Device{}
}

func TestAttributesAndCapacities(t *testing.T) {
	res := resourceslice.Objects("n1", resourceslice.Build("n1", node(2), resourceslice.Options{Pool: "team-a"}))
	attr := func(d resourceapi.Device, name resourceapi.QualifiedName) resourceapi.DeviceAttribute {
		return d.Attributes[name]
	}

	whole := find(t, res, "gpu-1")
	wantWhole := map[resourceapi.QualifiedName]resourceapi.DeviceAttribute{
		"type": {StringValue: ptr.To("gpu")}, "uuid": {StringValue: ptr.To("GPU-1")},
		"productName": {StringValue: ptr.To("NVIDIA H200")}, "brand": {StringValue: ptr.To("nvidia")},
		"architecture": {StringValue: ptr.To("hopper")}, "cudaComputeCapability": {VersionValue: ptr.To("9.0.0")},
		"driverVersion": {VersionValue: ptr.To("550.54.15")}, "cudaDriverVersion": {VersionValue: ptr.To("12.4.0")},
		"index": {IntValue: ptr.To(int64(1))}, "minor": {IntValue: ptr.To(int64(1))}, "pool": {StringValue: ptr.To("team-a")},
		"resource.kubernetes.io/pciBusID": {StringValue: ptr.To("0000:02:00.0")},
	}
	if diff := cmp.Diff(wantWhole, whole.Attributes); diff != "" {
		t.Errorf("whole GPU attributes (-want +got):\n%s", diff)
	}
	if got := value(whole.Capacity["memory"]); got != 141<<30 {
		t.Errorf("whole GPU memory = %d", got)
	}
	if whole.AllowMultipleAllocations != nil {
		t.Error("whole GPU must be allocated exclusively")
	}

	shared := find(t, res, "gpu-1-shared")
	if !ptr.Deref(shared.AllowMultipleAllocations, false) {
		t.Error("shared GPU must allow multiple allocations")
	}
	if *attr(shared, "type").StringValue != "shared" {
		t.Errorf("shared type = %v", *attr(shared, "type").StringValue)
	}
	for _, c := range []resourceapi.QualifiedName{"memory", "compute"} {
		if shared.Capacity[c].RequestPolicy == nil {
			t.Errorf("shared capacity %s has no request policy", c)
		}
	}
	if got := value(shared.Capacity["compute"]); got != 100 {
		t.Errorf("shared compute = %d, want 100", got)
	}

	mig := find(t, res, "gpu-1-mig-3g71gb-4")
	if *attr(mig, "type").StringValue != "mig" || *attr(mig, "profile").StringValue != "3g.71gb" ||
		*attr(mig, "parentUUID").StringValue != "GPU-1" || *attr(mig, "placementStart").IntValue != 4 {
		t.Errorf("MIG attributes = %v", mig.Attributes)
	}
	if _, ok := mig.Attributes["uuid"]; ok {
		t.Error("a MIG device has no UUID before it is created")
	}
	if got := value(mig.Capacity["multiprocessors"]); got != 60 {
		t.Errorf("MIG multiprocessors = %d", got)
	}
	if diff := cmp.Diff([]string{"gpu-1"}, []string{mig.ConsumesCounters[0].CounterSet}); diff != "" {
		t.Error(diff)
	}
}

func TestTaintsReachDevices(t *testing.T) {
	taint := resourceapi.DeviceTaint{Key: gpuapi.TaintKeyUnhealthy, Value: "xid-79", Effect: resourceapi.DeviceTaintEffectNoSchedule}
	res := resourceslice.Objects("n1", resourceslice.Build("n1", node(1), resourceslice.Options{
		Taints: map[string][]resourceapi.DeviceTaint{"gpu-0": {taint}},
	}))
	if diff := cmp.Diff([]resourceapi.DeviceTaint{taint}, find(t, res, "gpu-0").Taints); diff != "" {
		t.Errorf("taints (-want +got):\n%s", diff)
	}
	if got := find(t, res, "gpu-0-shared").Taints; len(got) != 0 {
		t.Errorf("untainted device has taints %v", got)
	}
}

func value(c resourceapi.DeviceCapacity) int64 { return c.Value.Value() }

func TestBindingConditionsReachEveryDevice(t *testing.T) {
	res := resourceslice.Objects("n1", resourceslice.Build("n1", node(2), resourceslice.Options{
		BindingConditions:        []string{"tenancy.tessera.dev/admitted"},
		BindingFailureConditions: []string{"tenancy.tessera.dev/rejected"},
	}))
	devices := 0
	for _, s := range res {
		for _, d := range s.Spec.Devices {
			devices++
			if diff := cmp.Diff([]string{"tenancy.tessera.dev/admitted"}, d.BindingConditions); diff != "" {
				t.Errorf("%s binding conditions (-want +got):\n%s", d.Name, diff)
			}
			if diff := cmp.Diff([]string{"tenancy.tessera.dev/rejected"}, d.BindingFailureConditions); diff != "" {
				t.Errorf("%s binding failure conditions (-want +got):\n%s", d.Name, diff)
			}
		}
	}
	if devices == 0 {
		t.Fatal("no devices published")
	}
	plain := resourceslice.Objects("n1", resourceslice.Build("n1", node(1), resourceslice.Options{}))
	if got := find(t, plain, "gpu-0").BindingConditions; got != nil {
		t.Errorf("without tenancy, gpu-0 has binding conditions %v", got)
	}
}

// TestDeviceOrder: whole and shared GPUs first, then MIG partitions profile
// by profile, GPU by GPU, each GPU's in the packing order of package partition.
func TestDeviceOrder(t *testing.T) {
	inv := node(3)
	var want []string
	for _, g := range inv.GPUs {
		want = append(want, gpuapi.WholeDeviceName(g.Index), gpuapi.SharedDeviceName(g.Index))
	}
	for _, p := range inv.GPUs[0].MIG.Profiles {
		for _, g := range inv.GPUs {
			for _, d := range partition.Build(g, partition.Options{}).Devices {
				if d.Kind == partition.KindMIG && d.Profile.ID == p.ID {
					want = append(want, d.Name)
				}
			}
		}
	}
	var got []string
	for _, s := range resourceslice.Build("n1", inv, resourceslice.Options{}).Pools["n1"].Slices {
		for _, d := range s.Devices {
			got = append(got, d.Name)
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("device order (-want +got):\n%s", diff)
	}
}

// TestObjectsSortInSliceOrder: the allocator tries a pool's slices in name
// order, so the names Objects gives must sort as the slices do, also past
// ten slices (16 GPUs with withdrawal: counter slices and one per GPU).
func TestObjectsSortInSliceOrder(t *testing.T) {
	res := resourceslice.Build("n1", node(16), resourceslice.Options{Pool: "default", WithdrawBlocked: true})
	objs := resourceslice.Objects("n1", res)
	if len(objs) <= 16 {
		t.Fatalf("%d slices, want more than 16", len(objs))
	}
	for i := 1; i < len(objs); i++ {
		if objs[i-1].Name >= objs[i].Name {
			t.Errorf("slice %d is named %s, which does not sort after slice %d's %s", i, objs[i].Name, i-1, objs[i-1].Name)
		}
	}
}
