package controller

import (
	"strings"
	"testing"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2/ktesting"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/internal/testing/builder"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

// startWithoutSlices: a tenant with a 54Gi budget has two 18Gi partitions of
// node n1 admitted by a first controller (replica "old"); then n1's slices are
// deleted (its kubelet restarts) and a new controller starts, having never
// seen them, and must decide two claims on node n2. It returns the API, the
// new controller and the keys of the two claims.
func startWithoutSlices(t *testing.T) (client.Client, *AdmissionReconciler, []types.NamespacedName) {
	t.Helper()
	_, ctx := ktesting.NewTestContext(t)
	api := newFake(t)
	tenant := &tenancyv1.GPUTenant{}
	if err := api.Get(ctx, types.NamespacedName{Name: "team-a"}, tenant); err != nil {
		t.Fatal(err)
	}
	tenant.Spec.Budget.GPUMemory = ptr.To(resource.MustParse("54Gi"))
	if err := api.Update(ctx, tenant); err != nil {
		t.Fatal(err)
	}
	old := &AdmissionReconciler{client: api, recorder: &fakeRecorder{reasons: map[string]int{}}, ledger: newLedger(), catalog: newDeviceCatalog(),
		decided: make(chan event.GenericEvent, 10), holder: "old"}
	for _, key := range []types.NamespacedName{{Namespace: "a1", Name: "c1"}, {Namespace: "a2", Name: "c2"}} {
		if _, err := old.Reconcile(ctx, reconcile.Request{NamespacedName: key}); err != nil {
			t.Fatalf("first controller: reconcile %s: %v", key, err)
		}
	}
	if err := api.DeleteAllOf(ctx, &resourceapi.ResourceSlice{}); err != nil {
		t.Fatal(err)
	}
	n2 := builder.MakeSlice("n2-slice", "n2")
	for _, d := range []string{"gpu-0-mig-1g18gb-0", "gpu-0-mig-1g18gb-1"} {
		n2.Device(builder.MakeDevice(d).Capacity(gpuapi.CapMemory, "18Gi").Obj())
	}
	if err := api.Create(ctx, n2.Obj()); err != nil {
		t.Fatal(err)
	}
	var keys []types.NamespacedName
	for i, name := range []string{"c5", "c6"} {
		c := pendingMIGClaim("a1", name, []string{"gpu-0-mig-1g18gb-0", "gpu-0-mig-1g18gb-1"}[i])
		c.Status.Allocation.Devices.Results[0].Pool = "n2"
		if err := api.Create(ctx, c); err != nil {
			t.Fatal(err)
		}
		keys = append(keys, client.ObjectKeyFromObject(c))
	}
	next := &AdmissionReconciler{client: api, recorder: &fakeRecorder{reasons: map[string]int{}}, ledger: newLedger(), catalog: newDeviceCatalog(),
		decided: make(chan event.GenericEvent, 10), catchUp: &leaderCatchUp{reader: api}, holder: "new"}
	return api, next, keys
}

// TestControllerStartingWithoutSlicesCostsFromRecords: the new controller
// costs the claims admitted on n1, whose slices it has never seen, from the
// memory recorded with their admission: of its two claims on n2 the first
// fits the budget (admitted) and the second does not (over budget). Each
// decision records its device's memory and the deciding replica.
func TestControllerStartingWithoutSlicesCostsFromRecords(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	api, next, keys := startWithoutSlices(t)
	want := []tenancy.State{tenancy.Admitted, tenancy.Rejected}
	for i, key := range keys {
		if _, err := next.Reconcile(ctx, reconcile.Request{NamespacedName: key}); err != nil {
			t.Fatalf("new controller: reconcile %s: %v", key, err)
		}
		claim := &resourceapi.ResourceClaim{}
		if err := api.Get(ctx, key, claim); err != nil {
			t.Fatal(err)
		}
		if got := tenancy.ClaimState(claim); got != want[i] {
			t.Errorf("claim %s: state %v, want %v", key, got, want[i])
		}
		rec, ok := tenancy.DecodeRecord(claim.Status.Devices[0].Data)
		if !ok || rec.DeviceMemory != 18<<30 || rec.Holder != "new" {
			t.Errorf("claim %s: record %+v (found %v), want 18Gi decided by new", key, rec, ok)
		}
	}
}

// TestNoRecordNoSliceRefusesToDecide: a claim admitted without a record (by
// a controller older than the records) whose slices are gone cannot be
// costed: the new controller decides nothing, rather than count the
// tenant's usage short, until the slices are back.
func TestNoRecordNoSliceRefusesToDecide(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	api, next, keys := startWithoutSlices(t)
	c1 := &resourceapi.ResourceClaim{}
	if err := api.Get(ctx, types.NamespacedName{Namespace: "a1", Name: "c1"}, c1); err != nil {
		t.Fatal(err)
	}
	c1.Status.Devices[0].Data = nil
	if err := api.Status().Update(ctx, c1); err != nil {
		t.Fatal(err)
	}
	_, err := next.Reconcile(ctx, reconcile.Request{NamespacedName: keys[0]})
	if err == nil || !strings.Contains(err.Error(), "is not published, its memory is unknown") {
		t.Errorf("new controller decided with an uncostable admitted claim: error %v", err)
	}
	claim := &resourceapi.ResourceClaim{}
	if err := api.Get(ctx, keys[0], claim); err != nil {
		t.Fatal(err)
	}
	if got := tenancy.ClaimState(claim); got != tenancy.Pending {
		t.Errorf("claim %s: state %v, want still pending", keys[0], got)
	}
}
