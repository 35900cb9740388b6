package tenancy_test

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/runtime"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

// withRecord puts a decision record of memory on the claim's status entry of
// device.
func withRecord(t *testing.T, c *claimWrapper, device string, memory int64) *claimWrapper {
	t.Helper()
	data, err := tenancy.EncodeRecord(tenancyv1.DecisionRecord{DeviceMemory: memory, Holder: "controller-a"})
	if err != nil {
		t.Fatal(err)
	}
	for i := range c.Status.Devices {
		if c.Status.Devices[i].Device == device {
			c.Status.Devices[i].Data = data
		}
	}
	return c
}

// TestRecordedMemory: the memory recorded with an admission is read back per
// device (the larger of two records of one shared GPU); a record on a
// rejected entry, a record of another kind and an entry without one give
// nothing.
func TestRecordedMemory(t *testing.T) {
	admitted := func(name, device string) *claimWrapper {
		return makeClaim("a", name).Request("gpu", gpuapi.ClassMIG).Allocated("gpu", device).Condition(device, tenancyv1.ConditionAdmitted)
	}
	foreign := admitted("c6", "gpu-4")
	foreign.Status.Devices[0].Data = &runtime.RawExtension{Raw: []byte(`{"apiVersion":"example.com/v1","kind":"DecisionRecord","deviceMemory":1}`)}
	share := func(name, memory string) *claimWrapper {
		return makeClaim("a", name).Request("gpu", gpuapi.ClassShared).Share("gpu", "gpu-1-shared", memory, name).Condition("gpu-1-shared", tenancyv1.ConditionAdmitted)
	}
	claims := []*claimWrapper{
		withRecord(t, admitted("c1", "gpu-0-mig-1g18gb-0"), "gpu-0-mig-1g18gb-0", 18*gi),
		withRecord(t, share("s1", "1Gi"), "gpu-1-shared", 140*gi),
		withRecord(t, share("s2", "2Gi"), "gpu-1-shared", 100*gi),
		withRecord(t, makeClaim("a", "c3").Request("gpu", gpuapi.ClassGPU).Allocated("gpu", "gpu-2").Condition("gpu-2", tenancyv1.ConditionRejected), "gpu-2", 80*gi),
		admitted("c5", "gpu-3"),
		foreign,
	}
	var objs []*resourceapi.ResourceClaim
	for _, c := range claims {
		objs = append(objs, c.Obj())
	}
	got := tenancy.RecordedMemory(objs)
	want := map[tenancy.DeviceID]int64{id("n1", "gpu-0-mig-1g18gb-0"): 18 * gi, id("n1", "gpu-1-shared"): 140 * gi}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("RecordedMemory (-want +got):\n%s", diff)
	}
}

// TestCostingMemoryTakesTheLarger: a device known to the slices only or to a
// record only is costed from it; one known to both at the larger, so that a
// stale low record never lowers what a device costs, nor a node's low
// capacity what an admitted device was admitted at.
func TestCostingMemoryTakesTheLarger(t *testing.T) {
	known := map[tenancy.DeviceID]int64{id("n1", "gpu-0"): 141, id("n1", "gpu-1"): 100, id("n1", "gpu-2"): 80}
	recorded := map[tenancy.DeviceID]int64{id("n1", "gpu-1"): 120, id("n1", "gpu-2"): 40, id("n2", "gpu-0"): 96}
	got := tenancy.CostingMemory(known, recorded)
	want := map[tenancy.DeviceID]int64{id("n1", "gpu-0"): 141, id("n1", "gpu-1"): 120, id("n1", "gpu-2"): 80, id("n2", "gpu-0"): 96}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("CostingMemory (-want +got):\n%s", diff)
	}
	if known[id("n1", "gpu-1")] != 100 {
		t.Error("CostingMemory changed its input")
	}
}

func id(pool, device string) tenancy.DeviceID {
	return tenancy.DeviceID{Driver: gpuapi.DriverName, Pool: pool, Device: device}
}
