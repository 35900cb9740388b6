package controller

import (
	"context"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2/ktesting"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/internal/testing/builder"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

// pendingShare is a claim allocated a 10Gi share of device, waiting for the
// controller's decision.
func pendingShare(ns, name, device string) *resourceapi.ResourceClaim {
	// The request as the sharing admission policy shapes it for the group of
	// the fixture's namespace.
	group := map[string]string{"a1": "a", "a2": "a", "b1": "b", "c1": tenancyv1.GroupAny, "d1": tenancyv1.GroupAny}[ns]
	if group == "" {
		group = tenancyv1.GroupUntenanted
	}
	return &resourceapi.ResourceClaim{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(ns + "-" + name)},
		Spec: resourceapi.ResourceClaimSpec{Devices: resourceapi.DeviceClaim{Requests: tenancy.SharingRequests(group, []resourceapi.DeviceRequest{{
			Name: "gpu", Exactly: &resourceapi.ExactDeviceRequest{DeviceClassName: gpuapi.ClassShared},
		}})}},
		Status: resourceapi.ResourceClaimStatus{Allocation: &resourceapi.AllocationResult{Devices: resourceapi.DeviceAllocationResult{
			Results: []resourceapi.DeviceRequestAllocationResult{{
				Request: "gpu/" + tenancyv1.SubrequestOwn, Driver: gpuapi.DriverName, Pool: "n1", Device: device, ShareID: ptr.To(types.UID(name)),
				ConsumedCapacity:  map[resourceapi.QualifiedName]resource.Quantity{gpuapi.CapMemory: resource.MustParse("10Gi")},
				BindingConditions: []string{tenancyv1.ConditionAdmitted}, BindingFailureConditions: []string{tenancyv1.ConditionRejected},
			}},
		}}},
	}
}

// sharingFixture: tenants a (Exclusive), b (Exclusive), c and d (Any), one
// namespace each and an untenanted one, one GPU offered as gpu-0-shared and
// gpu-1-shared (two GPUs' shared devices).
func sharingFixture(claims ...client.Object) []client.Object {
	slice := builder.MakeSlice("n1-slice", "n1")
	for _, d := range []string{"gpu-0-shared", "gpu-1-shared"} {
		device := builder.MakeDevice(d).Capacity(gpuapi.CapMemory, "141Gi").Obj()
		device.AllowMultipleAllocations = ptr.To(true)
		slice.Device(device)
	}
	tenant := func(name string, sharing tenancyv1.SharingPolicy) *tenancyv1.GPUTenant {
		return builder.MakeTenant(name).Classes(gpuapi.ClassShared).Sharing(sharing).Obj()
	}
	ns := func(name, tenant string) *corev1.Namespace { return builder.MakeNamespace(name).Tenant(tenant).Obj() }
	return append([]client.Object{slice.Obj(),
		tenant("a", ""), tenant("b", tenancyv1.SharingExclusive), tenant("c", tenancyv1.SharingAny), tenant("d", tenancyv1.SharingAny),
		ns("a1", "a"), ns("a2", "a"), ns("b1", "b"), ns("c1", "c"), ns("d1", "d"), ns("free", "none"),
	}, claims...)
}

func newSharingFake(t *testing.T, objs []client.Object) client.Client {
	t.Helper()
	scheme, err := Scheme()
	if err != nil {
		t.Fatal(err)
	}
	return withIndexes(fake.NewClientBuilder()).WithScheme(scheme).WithObjects(objs...).
		WithStatusSubresource(&resourceapi.ResourceClaim{}, &tenancyv1.GPUTenant{}).Build()
}

func claimState(ctx context.Context, t *testing.T, c client.Reader, key types.NamespacedName) tenancy.State {
	t.Helper()
	claim := &resourceapi.ResourceClaim{}
	if err := c.Get(ctx, key, claim); err != nil {
		t.Fatal(err)
	}
	return tenancy.ClaimState(claim)
}

// TestSharingGuardRace: shares of one fresh GPU for claims of several
// tenants, decided one after another while the cache never shows the
// decisions (the race the taint cannot close): the first group to be decided
// gets the GPU, every other group's claim is rejected, and the same group's
// later claims, in any of its namespaces, are admitted beside it. Tenants
// with sharing Any share with each other, not with Exclusive ones.
func TestSharingGuardRace(t *testing.T) {
	for name, tc := range map[string]struct {
		claims []*resourceapi.ResourceClaim
		want   []tenancy.State
	}{
		"first tenant wins": {
			claims: []*resourceapi.ResourceClaim{pendingShare("a1", "x", "gpu-0-shared"), pendingShare("b1", "y", "gpu-0-shared"), pendingShare("a2", "z", "gpu-0-shared")},
			want:   []tenancy.State{tenancy.Admitted, tenancy.Rejected, tenancy.Admitted},
		},
		"untenanted is a tenant": {
			claims: []*resourceapi.ResourceClaim{pendingShare("free", "x", "gpu-0-shared"), pendingShare("a1", "y", "gpu-0-shared"), pendingShare("free", "z", "gpu-0-shared")},
			want:   []tenancy.State{tenancy.Admitted, tenancy.Rejected, tenancy.Admitted},
		},
		"other GPU is free": {
			claims: []*resourceapi.ResourceClaim{pendingShare("a1", "x", "gpu-0-shared"), pendingShare("b1", "y", "gpu-1-shared")},
			want:   []tenancy.State{tenancy.Admitted, tenancy.Admitted},
		},
		"Any tenants share with each other only": {
			claims: []*resourceapi.ResourceClaim{pendingShare("c1", "x", "gpu-0-shared"), pendingShare("d1", "y", "gpu-0-shared"), pendingShare("a1", "z", "gpu-0-shared")},
			want:   []tenancy.State{tenancy.Admitted, tenancy.Admitted, tenancy.Rejected},
		},
	} {
		t.Run(name, func(t *testing.T) {
			_, ctx := ktesting.NewTestContext(t)
			var objs []client.Object
			for _, c := range tc.claims {
				objs = append(objs, c)
			}
			stale, writer := newSharingFake(t, sharingFixture(objs...)), newSharingFake(t, sharingFixture(objs...))
			rec := &fakeRecorder{reasons: map[string]int{}}
			r := &AdmissionReconciler{client: staleReads{Client: writer, reader: stale}, recorder: rec, ledger: newLedger(), catalog: newDeviceCatalog(), decided: make(chan event.GenericEvent, 10), sharing: newSharingGuard()}
			var got []tenancy.State
			for _, c := range tc.claims {
				key := client.ObjectKeyFromObject(c)
				if _, err := r.Reconcile(ctx, reconcile.Request{NamespacedName: key}); err != nil {
					t.Fatalf("reconcile %s: %v", key, err)
				}
				got = append(got, claimState(ctx, t, writer, key))
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("states (-want +got):\n%s", diff)
			}
			rejected := 0
			for _, s := range tc.want {
				if s == tenancy.Rejected {
					rejected++
				}
			}
			if rec.reasons[tenancyv1.ReasonSharedWithOtherTenant] != rejected {
				t.Errorf("events %v, want %d %s", rec.reasons, rejected, tenancyv1.ReasonSharedWithOtherTenant)
			}
		})
	}
}

// TestSharingGuardReleases: once the holding tenant's last share is
// deallocated, another tenant's share of the GPU is admitted.
func TestSharingGuardReleases(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	c := newSharingFake(t, sharingFixture(pendingShare("a1", "x", "gpu-0-shared"), pendingShare("b1", "y", "gpu-0-shared")))
	r := &AdmissionReconciler{client: c, recorder: &fakeRecorder{reasons: map[string]int{}}, ledger: newLedger(), catalog: newDeviceCatalog(), decided: make(chan event.GenericEvent, 10), sharing: newSharingGuard()}
	x, y := types.NamespacedName{Namespace: "a1", Name: "x"}, types.NamespacedName{Namespace: "b1", Name: "y"}
	for _, key := range []types.NamespacedName{x, y} {
		if _, err := r.Reconcile(ctx, reconcile.Request{NamespacedName: key}); err != nil {
			t.Fatal(err)
		}
	}
	if s := claimState(ctx, t, c, y); s != tenancy.Rejected {
		t.Fatalf("b's share beside a's: %v, want rejected", s)
	}
	// The scheduler deallocates both: a's pod went, b's claim is retried.
	for _, key := range []types.NamespacedName{x, y} {
		claim := &resourceapi.ResourceClaim{}
		if err := c.Get(ctx, key, claim); err != nil {
			t.Fatal(err)
		}
		claim.Status = resourceapi.ResourceClaimStatus{}
		if err := c.Status().Update(ctx, claim); err != nil {
			t.Fatal(err)
		}
	}
	// ... and allocates b's claim the same GPU again.
	retry := pendingShare("b1", "y", "gpu-0-shared")
	claim := &resourceapi.ResourceClaim{}
	if err := c.Get(ctx, y, claim); err != nil {
		t.Fatal(err)
	}
	claim.Status = retry.Status
	if err := c.Status().Update(ctx, claim); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Reconcile(ctx, reconcile.Request{NamespacedName: y}); err != nil {
		t.Fatal(err)
	}
	if s := claimState(ctx, t, c, y); s != tenancy.Admitted {
		t.Errorf("b's share after a's last went: %v, want admitted", s)
	}
}
