package controller

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2/ktesting"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
)

// admittedShare is a share of device whose allocation the controller admitted.
func admittedShare(ns, name, device string) *resourceapi.ResourceClaim {
	c := pendingShare(ns, name, device)
	r := c.Status.Allocation.Devices.Results[0]
	c.Status.Devices = []resourceapi.AllocatedDeviceStatus{{
		Driver: r.Driver, Pool: r.Pool, Device: r.Device, ShareID: ptr.To(string(*r.ShareID)),
		Conditions: []metav1.Condition{{Type: tenancyv1.ConditionAdmitted, Status: metav1.ConditionTrue, Reason: tenancyv1.ReasonAdmitted}},
	}}
	return c
}

// taints reads the sharing taints as device -> taint value.
func taints(ctx context.Context, t *testing.T, c client.Reader) map[string]string {
	t.Helper()
	var rules resourceapi.DeviceTaintRuleList
	if err := c.List(ctx, &rules); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, r := range rules.Items {
		out[*r.Spec.DeviceSelector.Device] = r.Spec.Taint.Value
	}
	return out
}

// TestSharingTaints: a GPU held by one tenant is tainted with the tenant; a
// GPU held by no one carries the free taint, which every shaped claim
// tolerates; the tenant's taint goes with the GPU's last share. A reconciler
// that starts over (a restarted controller) with stale rules from before
// puts them right, from the allocations and slices alone. While a claim that
// cannot tolerate the free taint waits, free GPUs go untainted.
func TestSharingTaints(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	stale := &resourceapi.DeviceTaintRule{
		ObjectMeta: metav1.ObjectMeta{Name: "gpu-1-shared.n1.sharing.tenancy.tessera.dev", Labels: map[string]string{tenancyv1.LabelManagedBy: tenancyv1.ManagedByValue}},
		Spec: resourceapi.DeviceTaintRuleSpec{
			DeviceSelector: &resourceapi.DeviceTaintSelector{Driver: ptr.To(gpuapi.DriverName), Pool: ptr.To("n1"), Device: ptr.To("gpu-1-shared")},
			Taint:          resourceapi.DeviceTaint{Key: tenancyv1.TaintKeyTenant, Value: "b", Effect: resourceapi.DeviceTaintEffectNoSchedule},
		},
	}
	foreign := &resourceapi.DeviceTaintRule{
		ObjectMeta: metav1.ObjectMeta{Name: "maintenance"},
		Spec: resourceapi.DeviceTaintRuleSpec{
			DeviceSelector: &resourceapi.DeviceTaintSelector{Device: ptr.To("gpu-9")},
			Taint:          resourceapi.DeviceTaint{Key: "example.com/maintenance", Effect: resourceapi.DeviceTaintEffectNoSchedule},
		},
	}
	c := newSharingFake(t, sharingFixture(admittedShare("a1", "x", "gpu-0-shared"), admittedShare("a2", "y", "gpu-0-shared"), stale, foreign))
	reconcileOnce := func() {
		t.Helper()
		if _, err := (&SharingReconciler{client: c}).Reconcile(ctx, reconcile.Request{}); err != nil {
			t.Fatal(err)
		}
	}
	deallocate := func(ns, name string) {
		t.Helper()
		claim := &resourceapi.ResourceClaim{}
		if err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, claim); err != nil {
			t.Fatal(err)
		}
		claim.Status = resourceapi.ResourceClaimStatus{}
		if err := c.Status().Update(ctx, claim); err != nil {
			t.Fatal(err)
		}
	}

	reconcileOnce()
	if diff := cmp.Diff(map[string]string{"gpu-0-shared": "a", "gpu-1-shared": tenancyv1.GroupFree, "gpu-9": ""}, taints(ctx, t, c)); diff != "" {
		t.Errorf("after a restart with a stale rule (-want +got):\n%s", diff)
	}
	// The API server stamps the taint's timeAdded; that is no reason to
	// update the rule (each update would trigger the next reconcile).
	rule := &resourceapi.DeviceTaintRule{}
	if err := c.Get(ctx, types.NamespacedName{Name: "gpu-0-shared.n1.sharing.tenancy.tessera.dev"}, rule); err != nil {
		t.Fatal(err)
	}
	rule.Spec.Taint.TimeAdded = &metav1.Time{Time: time.Date(2026, 12, 1, 3, 0, 0, 0, time.UTC)}
	if err := c.Update(ctx, rule); err != nil {
		t.Fatal(err)
	}
	stamped := rule.ResourceVersion
	reconcileOnce()
	if err := c.Get(ctx, types.NamespacedName{Name: rule.Name}, rule); err != nil {
		t.Fatal(err)
	}
	if rule.ResourceVersion != stamped {
		t.Errorf("rule updated although only timeAdded differs: %+v", rule.Spec.Taint)
	}
	deallocate("a1", "x")
	reconcileOnce()
	if diff := cmp.Diff(map[string]string{"gpu-0-shared": "a", "gpu-1-shared": tenancyv1.GroupFree, "gpu-9": ""}, taints(ctx, t, c)); diff != "" {
		t.Errorf("with one of a's two shares left (-want +got):\n%s", diff)
	}
	deallocate("a2", "y")
	reconcileOnce()
	if diff := cmp.Diff(map[string]string{"gpu-0-shared": tenancyv1.GroupFree, "gpu-1-shared": tenancyv1.GroupFree, "gpu-9": ""}, taints(ctx, t, c)); diff != "" {
		t.Errorf("after a's last share went (-want +got):\n%s", diff)
	}
	// An untenanted share: tainted with the untenanted group.
	if err := c.Create(ctx, pendingShare("free", "z", "gpu-1-shared")); err != nil {
		t.Fatal(err)
	}
	claim := &resourceapi.ResourceClaim{}
	if err := c.Get(ctx, types.NamespacedName{Namespace: "free", Name: "z"}, claim); err != nil {
		t.Fatal(err)
	}
	claim.Status = pendingShare("free", "z", "gpu-1-shared").Status
	if err := c.Status().Update(ctx, claim); err != nil {
		t.Fatal(err)
	}
	reconcileOnce()
	if diff := cmp.Diff(map[string]string{"gpu-0-shared": tenancyv1.GroupFree, "gpu-1-shared": tenancyv1.GroupUntenanted, "gpu-9": ""}, taints(ctx, t, c)); diff != "" {
		t.Errorf("with a pending untenanted share (-want +got):\n%s", diff)
	}

	// A claim from before the sharing policies waits: it could not tolerate
	// the free taint, so free GPUs go untainted until it is allocated or
	// gone; held GPUs stay tainted.
	legacy := pendingShare("free", "legacy", "gpu-0-shared")
	legacy.Spec.Devices.Requests = []resourceapi.DeviceRequest{{Name: "gpu", Exactly: &resourceapi.ExactDeviceRequest{DeviceClassName: gpuapi.ClassShared}}}
	legacy.Status = resourceapi.ResourceClaimStatus{}
	if err := c.Create(ctx, legacy); err != nil {
		t.Fatal(err)
	}
	reconcileOnce()
	if diff := cmp.Diff(map[string]string{"gpu-1-shared": tenancyv1.GroupUntenanted, "gpu-9": ""}, taints(ctx, t, c)); diff != "" {
		t.Errorf("while a claim that cannot tolerate the free taint waits (-want +got):\n%s", diff)
	}
	if err := c.Delete(ctx, legacy); err != nil {
		t.Fatal(err)
	}
	reconcileOnce()
	if diff := cmp.Diff(map[string]string{"gpu-0-shared": tenancyv1.GroupFree, "gpu-1-shared": tenancyv1.GroupUntenanted, "gpu-9": ""}, taints(ctx, t, c)); diff != "" {
		t.Errorf("once it is gone (-want +got):\n%s", diff)
	}

	b := &admissionv1.MutatingAdmissionPolicyBinding{}
	if err := c.Get(ctx, types.NamespacedName{Name: tenancyv1.PolicySharingUntenanted}, b); err != nil {
		t.Fatalf("untenanted sharing binding: %v", err)
	}
	want := []string{"a1", "a2", "b1", "c1", "d1"}
	if diff := cmp.Diff(want, b.Spec.MatchResources.NamespaceSelector.MatchExpressions[0].Values); diff != "" {
		t.Errorf("namespaces excluded from the untenanted binding (-want +got):\n%s", diff)
	}
}

// TestSharingTaintsOutlastWithdrawal: a plugin that withdraws blocked devices
// takes a free GPU's shared device out of its slice while the GPU is
// prepared whole; the GPU's free taint stays, unwritten, so the device comes
// back tainted. Once the node publishes no pool at all, the free taint goes.
func TestSharingTaintsOutlastWithdrawal(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	c := newSharingFake(t, sharingFixture())
	reconcileOnce := func() {
		t.Helper()
		if _, err := (&SharingReconciler{client: c}).Reconcile(ctx, reconcile.Request{}); err != nil {
			t.Fatal(err)
		}
	}
	reconcileOnce()
	free := map[string]string{"gpu-0-shared": tenancyv1.GroupFree, "gpu-1-shared": tenancyv1.GroupFree}
	if diff := cmp.Diff(free, taints(ctx, t, c)); diff != "" {
		t.Fatalf("both GPUs published (-want +got):\n%s", diff)
	}
	rule := &resourceapi.DeviceTaintRule{}
	if err := c.Get(ctx, types.NamespacedName{Name: "gpu-0-shared.n1.sharing.tenancy.tessera.dev"}, rule); err != nil {
		t.Fatal(err)
	}
	before := rule.ResourceVersion

	slice := &resourceapi.ResourceSlice{}
	if err := c.Get(ctx, types.NamespacedName{Name: "n1-slice"}, slice); err != nil {
		t.Fatal(err)
	}
	slice.Spec.Devices = []resourceapi.Device{{Name: "gpu-0"}, slice.Spec.Devices[1]}
	if err := c.Update(ctx, slice); err != nil {
		t.Fatal(err)
	}
	reconcileOnce()
	if diff := cmp.Diff(free, taints(ctx, t, c)); diff != "" {
		t.Errorf("gpu-0-shared withdrawn (-want +got):\n%s", diff)
	}
	if err := c.Get(ctx, types.NamespacedName{Name: rule.Name}, rule); err != nil {
		t.Fatal(err)
	}
	if rule.ResourceVersion != before {
		t.Errorf("rule of the withdrawn gpu-0-shared was written again (resourceVersion %s, was %s)", rule.ResourceVersion, before)
	}

	if err := c.Delete(ctx, slice); err != nil {
		t.Fatal(err)
	}
	reconcileOnce()
	if got := taints(ctx, t, c); len(got) != 0 {
		t.Errorf("node n1 publishes nothing, rules left: %v", got)
	}
}
