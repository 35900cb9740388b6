package controller

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2/ktesting"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/internal/testing/builder"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

// fakeRecorder counts events by reason.
type fakeRecorder struct{ reasons map[string]int }

func (r *fakeRecorder) Eventf(_ runtime.Object, _ runtime.Object, _, reason, _, _ string, _ ...any) {
	r.reasons[reason]++
}
func (r *fakeRecorder) AnnotatedEventf(_ runtime.Object, _ runtime.Object, _ map[string]string, _, reason, _, _ string, _ ...any) {
	r.reasons[reason]++
}

// staleReads reads from one client (a cache that has not caught up) and
// writes through another.
type staleReads struct {
	client.Client
	reader client.Reader
}

func (s staleReads) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	return s.reader.Get(ctx, key, obj, opts...)
}
func (s staleReads) List(ctx context.Context, list client.ObjectList, opts ...client.ListOption) error {
	return s.reader.List(ctx, list, opts...)
}

func pendingMIGClaim(ns, name, device string) *resourceapi.ResourceClaim {
	return &resourceapi.ResourceClaim{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(name)},
		Spec: resourceapi.ResourceClaimSpec{Devices: resourceapi.DeviceClaim{Requests: []resourceapi.DeviceRequest{{
			Name: "gpu", Exactly: &resourceapi.ExactDeviceRequest{DeviceClassName: gpuapi.ClassMIG},
		}}}},
		Status: resourceapi.ResourceClaimStatus{Allocation: &resourceapi.AllocationResult{Devices: resourceapi.DeviceAllocationResult{
			Results: []resourceapi.DeviceRequestAllocationResult{{
				Request: "gpu", Driver: gpuapi.DriverName, Pool: "n1", Device: device,
				BindingConditions: []string{tenancyv1.ConditionAdmitted}, BindingFailureConditions: []string{tenancyv1.ConditionRejected},
			}},
		}}},
	}
}

func fixture() []client.Object {
	slice := builder.MakeSlice("n1-slice", "n1")
	for _, d := range []string{"gpu-0-mig-1g18gb-0", "gpu-0-mig-1g18gb-1", "gpu-0-mig-1g18gb-2"} {
		slice.Device(builder.MakeDevice(d).Capacity(gpuapi.CapMemory, "18Gi").Obj())
	}
	tenant := builder.MakeTenant("team-a").Classes(gpuapi.ClassMIG).Memory("36Gi").Obj()
	ns := func(name, tenant string) *corev1.Namespace { return builder.MakeNamespace(name).Tenant(tenant).Obj() }
	return []client.Object{slice.Obj(), tenant, ns("a1", "team-a"), ns("a2", "team-a"), ns("free", "none"),
		pendingMIGClaim("a1", "c1", "gpu-0-mig-1g18gb-0"),
		pendingMIGClaim("a2", "c2", "gpu-0-mig-1g18gb-1"),
		pendingMIGClaim("a1", "c3", "gpu-0-mig-1g18gb-2"),
		pendingMIGClaim("free", "c4", "gpu-0-mig-1g18gb-2"),
	}
}

func newFake(t *testing.T) client.Client {
	t.Helper()
	scheme, err := Scheme()
	if err != nil {
		t.Fatal(err)
	}
	return withIndexes(fake.NewClientBuilder()).WithScheme(scheme).WithObjects(fixture()...).
		WithStatusSubresource(&resourceapi.ResourceClaim{}, &tenancyv1.GPUTenant{}).Build()
}

// TestBudgetHoldsWithAStaleCache decides three claims of an 18Gi partition
// each, for a tenant with a 36Gi budget, while the reads never show the
// decisions already written (a cache that lags): the ledger must still count
// the first two and refuse the third.
func TestBudgetHoldsWithAStaleCache(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	stale, writer := newFake(t), newFake(t)
	rec := &fakeRecorder{reasons: map[string]int{}}
	r := &AdmissionReconciler{client: staleReads{Client: writer, reader: stale}, recorder: rec, ledger: newLedger(), catalog: newDeviceCatalog(), decided: make(chan event.GenericEvent, 10)}

	want := map[string]string{"a1/c1": tenancyv1.ConditionAdmitted, "a2/c2": tenancyv1.ConditionAdmitted, "a1/c3": tenancyv1.ConditionRejected, "free/c4": tenancyv1.ConditionAdmitted}
	for _, key := range []types.NamespacedName{{Namespace: "a1", Name: "c1"}, {Namespace: "a2", Name: "c2"}, {Namespace: "a1", Name: "c3"}, {Namespace: "free", Name: "c4"}} {
		if _, err := r.Reconcile(ctx, reconcile.Request{NamespacedName: key}); err != nil {
			t.Fatalf("reconcile %s: %v", key, err)
		}
		claim := &resourceapi.ResourceClaim{}
		if err := writer.Get(ctx, key, claim); err != nil {
			t.Fatal(err)
		}
		if len(claim.Status.Devices) != 1 {
			t.Fatalf("claim %s: status.devices = %v", key, claim.Status.Devices)
		}
		st := claim.Status.Devices[0]
		if !meta.IsStatusConditionTrue(st.Conditions, want[key.String()]) {
			t.Errorf("claim %s: conditions %+v, want %s", key, st.Conditions, want[key.String()])
		}
		if tenancy.ClaimState(claim) == tenancy.Pending {
			t.Errorf("claim %s still pending after its decision", key)
		}
	}
	if rec.reasons[tenancyv1.ReasonOverBudget] != 1 || rec.reasons[tenancyv1.ReasonAdmitted] != 2 || rec.reasons[tenancyv1.ReasonNoTenancy] != 1 {
		t.Errorf("events %v, want 2 Admitted, 1 OverBudget, 1 NoTenant", rec.reasons)
	}
}

// TestDeallocationReleasesBudget admits two claims, then sees one deallocated:
// the next claim fits again.
func TestDeallocationReleasesBudget(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	c := newFake(t)
	r := &AdmissionReconciler{client: c, recorder: &fakeRecorder{reasons: map[string]int{}}, ledger: newLedger(), catalog: newDeviceCatalog(), decided: make(chan event.GenericEvent, 10)}
	decide := func(ns, name string) string {
		t.Helper()
		key := types.NamespacedName{Namespace: ns, Name: name}
		if _, err := r.Reconcile(ctx, reconcile.Request{NamespacedName: key}); err != nil {
			t.Fatal(err)
		}
		claim := &resourceapi.ResourceClaim{}
		if err := c.Get(ctx, key, claim); err != nil {
			t.Fatal(err)
		}
		return map[tenancy.State]string{tenancy.Admitted: "admitted", tenancy.Rejected: "rejected", tenancy.Pending: "pending"}[tenancy.ClaimState(claim)]
	}
	if got := decide("a1", "c1") + decide("a2", "c2"); got != "admittedadmitted" {
		t.Fatalf("first two: %s", got)
	}
	// The scheduler deallocates c1 (its pod went).
	c1 := &resourceapi.ResourceClaim{}
	if err := c.Get(ctx, types.NamespacedName{Namespace: "a1", Name: "c1"}, c1); err != nil {
		t.Fatal(err)
	}
	c1.Status = resourceapi.ResourceClaimStatus{}
	if err := c.Status().Update(ctx, c1); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Reconcile(ctx, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: "a1", Name: "c1"}}); err != nil {
		t.Fatal(err)
	}
	if got := decide("a1", "c3"); got != "admitted" {
		t.Errorf("after a deallocation the third claim is %s, want admitted", got)
	}
}
