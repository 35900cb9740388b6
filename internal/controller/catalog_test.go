package controller

import (
	"testing"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2/ktesting"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/internal/testing/builder"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

// TestAdmissionDecidesWhileSlicesAreGone: node n1's kubelet restarts after
// c1 was admitted and c2, c3 were allocated, deleting n1's slices for a
// while; meanwhile a compromised node n2 publishes n1's pool with 1-byte
// devices. Decisions go on with the memory n1 last published: c2 fits the
// 36Gi budget beside c1, c3 does not, and the tenant's status shows 36Gi.
func TestAdmissionDecidesWhileSlicesAreGone(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	c := newFake(t)
	catalog := newDeviceCatalog()
	r := &AdmissionReconciler{client: c, recorder: &fakeRecorder{reasons: map[string]int{}}, ledger: newLedger(), catalog: catalog, decided: make(chan event.GenericEvent, 10)}
	decide := func(ns, name string) tenancy.State {
		t.Helper()
		key := types.NamespacedName{Namespace: ns, Name: name}
		if _, err := r.Reconcile(ctx, reconcile.Request{NamespacedName: key}); err != nil {
			t.Fatalf("reconcile %s: %v", key, err)
		}
		return claimState(ctx, t, c, key)
	}
	if s := decide("a1", "c1"); s != tenancy.Admitted {
		t.Fatalf("c1 %v, want admitted", s)
	}

	slice := &resourceapi.ResourceSlice{}
	if err := c.Get(ctx, types.NamespacedName{Name: "n1-slice"}, slice); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx, slice); err != nil {
		t.Fatal(err)
	}
	forged := builder.MakeSlice("n2-forged", "n2").Pool("n1", 1, 1)
	for _, d := range []string{"gpu-0-mig-1g18gb-0", "gpu-0-mig-1g18gb-1", "gpu-0-mig-1g18gb-2"} {
		forged.Device(builder.MakeDevice(d).Capacity(gpuapi.CapMemory, "1").Obj())
	}
	if err := c.Create(ctx, forged.Obj()); err != nil {
		t.Fatal(err)
	}

	if s := decide("a2", "c2"); s != tenancy.Admitted {
		t.Errorf("c2 %v while n1's slices are gone, want admitted (18Gi + 18Gi fit 36Gi)", s)
	}
	if s := decide("a1", "c3"); s != tenancy.Rejected {
		t.Errorf("c3 %v while n1's slices are gone, want rejected over budget", s)
	}
	tr := &TenantReconciler{client: c, recorder: &fakeRecorder{reasons: map[string]int{}}, ledger: r.ledger, catalog: catalog, untenanted: UntenantedAllow, decided: make(chan event.GenericEvent)}
	if got := reconcileTenant(t, tr, "team-a").Status.Usage.GPUMemory.String(); got != "36Gi" {
		t.Errorf("status.usage.gpuMemory = %s while n1's slices are gone, want 36Gi", got)
	}
}
