package controller

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2/ktesting"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/internal/testing/builder"
)

func reconcileTenant(t *testing.T, r *TenantReconciler, name string) *tenancyv1.GPUTenant {
	t.Helper()
	_, ctx := ktesting.NewTestContext(t)
	if _, err := r.Reconcile(ctx, reconcile.Request{NamespacedName: types.NamespacedName{Name: name}}); err != nil {
		t.Fatalf("reconcile %s: %v", name, err)
	}
	tenant := &tenancyv1.GPUTenant{}
	if err := r.client.Get(ctx, types.NamespacedName{Name: name}, tenant); err != nil {
		t.Fatal(err)
	}
	return tenant
}

// TestTenantEnforcementObjects checks that a tenant gets its binding, one
// quota per namespace and its dedicated classes, owned by it, and loses the
// ones it no longer wants.
func TestTenantEnforcementObjects(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	c := newFake(t)
	tenant := &tenancyv1.GPUTenant{}
	if err := c.Get(ctx, types.NamespacedName{Name: "team-a"}, tenant); err != nil {
		t.Fatal(err)
	}
	tenant.Spec.DedicatedPool = "pool-a"
	tenant.Spec.NamespaceQuota = &tenancyv1.NamespaceQuota{Devices: map[string]int64{gpuapi.ClassMIG: 7}}
	if err := c.Update(ctx, tenant); err != nil {
		t.Fatal(err)
	}
	r := &TenantReconciler{client: c, recorder: &fakeRecorder{reasons: map[string]int{}}, ledger: newLedger(), catalog: newDeviceCatalog(), untenanted: UntenantedDeny, decided: make(chan event.GenericEvent)}
	got := reconcileTenant(t, r, "team-a")

	if diff := cmp.Diff([]string{"a1", "a2"}, got.Status.Namespaces); diff != "" {
		t.Errorf("namespaces (-want +got):\n%s", diff)
	}
	if !meta.IsStatusConditionTrue(got.Status.Conditions, tenancyv1.TenantReady) {
		t.Errorf("not ready: %+v", got.Status.Conditions)
	}
	binding := &admissionv1.ValidatingAdmissionPolicyBinding{}
	if err := c.Get(ctx, types.NamespacedName{Name: tenancyv1.BindingName("team-a")}, binding); err != nil {
		t.Fatalf("binding: %v", err)
	}
	if owner := metav1.GetControllerOf(binding); owner == nil || owner.Name != "team-a" {
		t.Errorf("binding owner %v", owner)
	}
	for _, ns := range []string{"a1", "a2"} {
		q := &corev1.ResourceQuota{}
		if err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: tenancyv1.QuotaName}, q); err != nil {
			t.Fatalf("quota in %s: %v", ns, err)
		}
	}
	for _, name := range tenancyv1.DedicatedClassNames("team-a") {
		if err := c.Get(ctx, types.NamespacedName{Name: name}, &resourceapi.DeviceClass{}); err != nil {
			t.Errorf("dedicated class %s: %v", name, err)
		}
	}
	untenanted := &admissionv1.ValidatingAdmissionPolicyBinding{}
	if err := c.Get(ctx, types.NamespacedName{Name: tenancyv1.PolicyUntenanted}, untenanted); err != nil {
		t.Fatalf("untenanted binding: %v", err)
	}
	if diff := cmp.Diff([]string{"a1", "a2"}, untenanted.Spec.MatchResources.NamespaceSelector.MatchExpressions[0].Values); diff != "" {
		t.Errorf("untenanted binding excludes (-want +got):\n%s", diff)
	}
	outsiders := &admissionv1.ValidatingAdmissionPolicyBinding{}
	if err := c.Get(ctx, types.NamespacedName{Name: tenancyv1.PolicyOutsiders}, outsiders); err != nil {
		t.Fatalf("outsiders binding: %v", err)
	}
	if diff := cmp.Diff([]string{"a1", "a2"}, outsiders.Spec.MatchResources.NamespaceSelector.MatchExpressions[0].Values); diff != "" {
		t.Errorf("outsiders binding excludes (-want +got):\n%s", diff)
	}

	// a2 leaves the tenant; the pool and quota go.
	a2 := &corev1.Namespace{}
	if err := c.Get(ctx, types.NamespacedName{Name: "a2"}, a2); err != nil {
		t.Fatal(err)
	}
	a2.Labels = nil
	if err := c.Update(ctx, a2); err != nil {
		t.Fatal(err)
	}
	tenant = got.DeepCopy()
	tenant.Spec.DedicatedPool = ""
	if err := c.Update(ctx, tenant); err != nil {
		t.Fatal(err)
	}
	reconcileTenant(t, r, "team-a")
	if err := c.Get(ctx, types.NamespacedName{Namespace: "a2", Name: tenancyv1.QuotaName}, &corev1.ResourceQuota{}); !apierrors.IsNotFound(err) {
		t.Errorf("quota in a namespace that left the tenant: %v", err)
	}
	var classes resourceapi.DeviceClassList
	if err := c.List(ctx, &classes, client.MatchingLabels{tenancyv1.LabelOwnerTenant: "team-a"}); err != nil || len(classes.Items) != 0 {
		t.Errorf("dedicated classes left without a pool: %d (err %v)", len(classes.Items), err)
	}
}

// TestTenantConflict checks that two tenants selecting one namespace both
// show Conflict and list it as conflicting, which the policy refuses.
func TestTenantConflict(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	c := newFake(t)
	second := builder.MakeTenant("team-z").Selector(metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{
		Key: corev1.LabelMetadataName, Operator: metav1.LabelSelectorOpIn, Values: []string{"a2"},
	}}}).Obj()
	if err := c.Create(ctx, second); err != nil {
		t.Fatal(err)
	}
	a2 := &corev1.Namespace{}
	if err := c.Get(ctx, types.NamespacedName{Name: "a2"}, a2); err != nil {
		t.Fatal(err)
	}
	a2.Labels[corev1.LabelMetadataName] = "a2"
	if err := c.Update(ctx, a2); err != nil {
		t.Fatal(err)
	}
	rec := &fakeRecorder{reasons: map[string]int{}}
	r := &TenantReconciler{client: c, recorder: rec, ledger: newLedger(), catalog: newDeviceCatalog(), untenanted: UntenantedAllow, decided: make(chan event.GenericEvent)}
	for _, name := range []string{"team-a", "team-z"} {
		got := reconcileTenant(t, r, name)
		if !meta.IsStatusConditionTrue(got.Status.Conditions, tenancyv1.TenantConflict) {
			t.Errorf("%s: no Conflict condition: %+v", name, got.Status.Conditions)
		}
		if diff := cmp.Diff([]string{"a2"}, got.Status.ConflictingNamespaces); diff != "" {
			t.Errorf("%s conflicting namespaces (-want +got):\n%s", name, diff)
		}
	}
	if rec.reasons[tenancyv1.ReasonConflict] != 2 {
		t.Errorf("Conflict events %d, want one per tenant", rec.reasons[tenancyv1.ReasonConflict])
	}
	// With --untenanted=allow, the outsiders binding is kept all the same.
	if err := c.Get(ctx, types.NamespacedName{Name: tenancyv1.PolicyOutsiders}, &admissionv1.ValidatingAdmissionPolicyBinding{}); err != nil {
		t.Errorf("outsiders binding with --untenanted=allow: %v", err)
	}
}
