package controller

import (
	"testing"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2/ktesting"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/event"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

// TestWriteRefusesUnknownKinds checks that the write paths return an error
// for a kind the controller does not own, instead of writing it without its
// spec or skipping it.
func TestWriteRefusesUnknownKinds(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	c := newFake(t)
	r := &TenantReconciler{client: c}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "a1", Name: "x", Labels: map[string]string{tenancyv1.LabelManagedBy: tenancyv1.ManagedByValue}}}
	if err := r.apply(ctx, cm, nil); err == nil {
		t.Error("applying a ConfigMap: no error")
	}
	if err := c.Get(ctx, client.ObjectKeyFromObject(cm), &corev1.ConfigMap{}); err == nil {
		t.Error("a ConfigMap was written")
	}
	if err := prune(ctx, c, &corev1.ConfigMapList{}, client.MatchingLabels{tenancyv1.LabelManagedBy: tenancyv1.ManagedByValue}, keepKeys(nil)); err == nil {
		t.Error("pruning ConfigMaps: no error")
	}
}

// TestApplyKeepsOtherWritersFields checks that the controller writes only
// the fields it sets: a label another writer adds to a tenant's quota stays,
// while the quota's limits, which the controller sets, are taken back.
func TestApplyKeepsOtherWritersFields(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	c := newFake(t)
	tenant := &tenancyv1.GPUTenant{}
	if err := c.Get(ctx, types.NamespacedName{Name: "team-a"}, tenant); err != nil {
		t.Fatal(err)
	}
	tenant.Spec.NamespaceQuota = &tenancyv1.NamespaceQuota{Devices: map[string]int64{gpuapi.ClassMIG: 7}}
	if err := c.Update(ctx, tenant); err != nil {
		t.Fatal(err)
	}
	r := &TenantReconciler{client: c, recorder: &fakeRecorder{reasons: map[string]int{}}, ledger: newLedger(), catalog: newDeviceCatalog(), untenanted: UntenantedDeny, decided: make(chan event.GenericEvent)}
	reconcileTenant(t, r, "team-a")

	key := types.NamespacedName{Namespace: "a1", Name: tenancyv1.QuotaName}
	q := &corev1.ResourceQuota{}
	if err := c.Get(ctx, key, q); err != nil {
		t.Fatal(err)
	}
	q.Labels["example.com/cost-center"] = "42"
	q.Spec.Hard[tenancy.QuotaResource(gpuapi.ClassMIG)] = resource.MustParse("100")
	if err := c.Update(ctx, q, client.FieldOwner("someone-else")); err != nil {
		t.Fatal(err)
	}
	reconcileTenant(t, r, "team-a")

	if err := c.Get(ctx, key, q); err != nil {
		t.Fatal(err)
	}
	if q.Labels["example.com/cost-center"] != "42" {
		t.Errorf("another writer's label is gone: %v", q.Labels)
	}
	if q.Labels[tenancyv1.LabelOwnerTenant] != "team-a" {
		t.Errorf("owner label: %v", q.Labels)
	}
	if got := q.Spec.Hard[tenancy.QuotaResource(gpuapi.ClassMIG)]; got.Value() != 7 {
		t.Errorf("quota limit %s, want the tenant's 7 back", got.String())
	}
}

// TestPruneDeletesOnlyWhatItOwnsAndNoLongerWants checks that prune deletes
// the labelled objects keep does not keep, and leaves the kept ones and the
// unlabelled ones.
func TestPruneDeletesOnlyWhatItOwnsAndNoLongerWants(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	c := newFake(t)
	owned := map[string]string{tenancyv1.LabelOwnerTenant: "team-a"}
	for _, q := range []*corev1.ResourceQuota{
		{ObjectMeta: metav1.ObjectMeta{Namespace: "a1", Name: "kept", Labels: owned}},
		{ObjectMeta: metav1.ObjectMeta{Namespace: "a2", Name: "gone", Labels: owned}},
		{ObjectMeta: metav1.ObjectMeta{Namespace: "a2", Name: "someone-elses"}},
	} {
		if err := c.Create(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	keep := keepKeys(map[types.NamespacedName]bool{{Namespace: "a1", Name: "kept"}: true})
	if err := prune(ctx, c, &corev1.ResourceQuotaList{}, owned, keep); err != nil {
		t.Fatal(err)
	}
	var left corev1.ResourceQuotaList
	if err := c.List(ctx, &left); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, q := range left.Items {
		names = append(names, q.Namespace+"/"+q.Name)
	}
	if len(names) != 2 || names[0] != "a1/kept" || names[1] != "a2/someone-elses" {
		t.Errorf("left %v, want [a1/kept a2/someone-elses]", names)
	}
}

// TestUntenantedAllowPrunesOnlyTheUntenantedBinding: a controller that
// denied untenanted namespaces and now allows them deletes the untenanted
// binding, and keeps the outsiders binding and the tenants' own.
func TestUntenantedAllowPrunesOnlyTheUntenantedBinding(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	c := newFake(t)
	r := &TenantReconciler{client: c, recorder: &fakeRecorder{reasons: map[string]int{}}, ledger: newLedger(), catalog: newDeviceCatalog(), untenanted: UntenantedDeny, decided: make(chan event.GenericEvent)}
	reconcileTenant(t, r, "team-a")
	if err := c.Get(ctx, types.NamespacedName{Name: tenancyv1.PolicyUntenanted}, &admissionv1.ValidatingAdmissionPolicyBinding{}); err != nil {
		t.Fatalf("untenanted binding with --untenanted=deny: %v", err)
	}
	r.untenanted = UntenantedAllow
	reconcileTenant(t, r, "team-a")
	if err := c.Get(ctx, types.NamespacedName{Name: tenancyv1.PolicyUntenanted}, &admissionv1.ValidatingAdmissionPolicyBinding{}); !apierrors.IsNotFound(err) {
		t.Errorf("untenanted binding with --untenanted=allow: %v", err)
	}
	for _, name := range []string{tenancyv1.PolicyOutsiders, tenancyv1.BindingName("team-a")} {
		if err := c.Get(ctx, types.NamespacedName{Name: name}, &admissionv1.ValidatingAdmissionPolicyBinding{}); err != nil {
			t.Errorf("binding %s: %v", name, err)
		}
	}
}

// TestApplyTakesOverWhatUpdateWrote: a quota an older controller wrote by
// create and update (its fields owned by an Update entry of the same field
// manager) loses a limit the tenant no longer sets once the controller
// applies it: apply alone would leave fields owned by the Update entry.
func TestApplyTakesOverWhatUpdateWrote(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	scheme, err := Scheme()
	if err != nil {
		t.Fatal(err)
	}
	// The API server returns managedFields; the fake only when asked.
	c := withIndexes(fake.NewClientBuilder()).WithScheme(scheme).WithObjects(fixture()...).
		WithStatusSubresource(&resourceapi.ResourceClaim{}, &tenancyv1.GPUTenant{}).WithReturnManagedFields().Build()
	tenant := &tenancyv1.GPUTenant{}
	if err := c.Get(ctx, types.NamespacedName{Name: "team-a"}, tenant); err != nil {
		t.Fatal(err)
	}
	tenant.Spec.NamespaceQuota = &tenancyv1.NamespaceQuota{Devices: map[string]int64{gpuapi.ClassMIG: 7}}
	if err := c.Update(ctx, tenant); err != nil {
		t.Fatal(err)
	}
	old := tenancy.Quota(tenant, "a1")
	old.Spec.Hard[tenancy.QuotaResource(gpuapi.ClassShared)] = resource.MustParse("3")
	if err := c.Create(ctx, old, client.FieldOwner(fieldManager)); err != nil {
		t.Fatal(err)
	}
	r := &TenantReconciler{client: c, recorder: &fakeRecorder{reasons: map[string]int{}}, ledger: newLedger(), catalog: newDeviceCatalog(), untenanted: UntenantedDeny, decided: make(chan event.GenericEvent)}
	reconcileTenant(t, r, "team-a")

	q := &corev1.ResourceQuota{}
	if err := c.Get(ctx, client.ObjectKeyFromObject(old), q); err != nil {
		t.Fatal(err)
	}
	want := corev1.ResourceList{tenancy.QuotaResource(gpuapi.ClassMIG): resource.MustParse("7")}
	if len(q.Spec.Hard) != 1 || q.Spec.Hard.Name(tenancy.QuotaResource(gpuapi.ClassMIG), resource.DecimalSI).Value() != 7 {
		t.Errorf("quota limits %v, want %v", q.Spec.Hard, want)
	}
}
