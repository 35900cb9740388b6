package controller

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2/ktesting"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
)

// TestBorrowingInStatusMetricsAndClaims: team-a (36Gi budget) is admitted
// two 18Gi partitions; with a guarantee of 18Gi it borrows 18Gi, shown in its
// status, its metric and on the later claim; once the guarantee covers both,
// it borrows nothing and the mark goes.
func TestBorrowingInStatusMetricsAndClaims(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	c := newFake(t)
	l := newLedger()
	ar := &AdmissionReconciler{client: c, recorder: &fakeRecorder{reasons: map[string]int{}}, ledger: l, catalog: newDeviceCatalog(), decided: make(chan event.GenericEvent, 10)}
	for _, key := range []types.NamespacedName{{Namespace: "a1", Name: "c1"}, {Namespace: "a2", Name: "c2"}} {
		if _, err := ar.Reconcile(ctx, reconcile.Request{NamespacedName: key}); err != nil {
			t.Fatalf("reconcile %s: %v", key, err)
		}
	}
	tr := &TenantReconciler{client: c, recorder: &fakeRecorder{reasons: map[string]int{}}, ledger: l, catalog: newDeviceCatalog(), untenanted: UntenantedAllow, decided: make(chan event.GenericEvent)}
	marked := func() map[string]string {
		out := map[string]string{}
		for _, key := range []types.NamespacedName{{Namespace: "a1", Name: "c1"}, {Namespace: "a2", Name: "c2"}} {
			claim := &resourceapi.ResourceClaim{}
			if err := c.Get(ctx, key, claim); err != nil {
				t.Fatal(err)
			}
			out[key.String()] = claim.Annotations[tenancyv1.AnnotationBorrowed]
		}
		return out
	}

	for _, step := range []struct {
		guarantee    string
		wantBorrowed string
		wantMarked   map[string]string
	}{
		{guarantee: "18Gi", wantBorrowed: "18Gi", wantMarked: map[string]string{"a1/c1": "", "a2/c2": "true"}},
		{guarantee: "36Gi", wantBorrowed: "0", wantMarked: map[string]string{"a1/c1": "", "a2/c2": ""}},
	} {
		tenant := &tenancyv1.GPUTenant{}
		if err := c.Get(ctx, types.NamespacedName{Name: "team-a"}, tenant); err != nil {
			t.Fatal(err)
		}
		tenant.Spec.Guarantee = &tenancyv1.Budget{GPUMemory: ptr.To(resource.MustParse(step.guarantee))}
		if err := c.Update(ctx, tenant); err != nil {
			t.Fatal(err)
		}
		status := reconcileTenant(t, tr, "team-a").Status
		if got := status.Borrowed.GPUMemory.String(); got != step.wantBorrowed {
			t.Errorf("guarantee %s: status.borrowed.gpuMemory = %s, want %s", step.guarantee, got, step.wantBorrowed)
		}
		want := resource.MustParse(step.wantBorrowed)
		if got := testutil.ToFloat64(tenantMemoryBorrowed.WithLabelValues("team-a")); got != float64(want.Value()) {
			t.Errorf("guarantee %s: tessera_tenant_borrowed_gpu_memory_bytes = %v, want %d", step.guarantee, got, want.Value())
		}
		if diff := cmp.Diff(step.wantMarked, marked()); diff != "" {
			t.Errorf("guarantee %s: %s annotations (-want +got):\n%s", step.guarantee, tenancyv1.AnnotationBorrowed, diff)
		}
	}
}

// TestGuaranteeOverCommitted: the fixture's fleet is one GPU of 18Gi (its
// largest partition); a guarantee of 36Gi over-promises it, which team-a's
// status and a Warning Event say, and a guarantee of 18Gi does not.
func TestGuaranteeOverCommitted(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	c := newFake(t)
	rec := &fakeRecorder{reasons: map[string]int{}}
	tr := &TenantReconciler{client: c, recorder: rec, ledger: newLedger(), catalog: newDeviceCatalog(), untenanted: UntenantedAllow, decided: make(chan event.GenericEvent)}
	for _, step := range []struct {
		guarantee  string
		wantStatus metav1.ConditionStatus
		wantEvents int
	}{
		{guarantee: "36Gi", wantStatus: metav1.ConditionTrue, wantEvents: 1},
		{guarantee: "18Gi", wantStatus: metav1.ConditionFalse, wantEvents: 1},
		{guarantee: "36Gi", wantStatus: metav1.ConditionTrue, wantEvents: 2},
	} {
		tenant := &tenancyv1.GPUTenant{}
		if err := c.Get(ctx, types.NamespacedName{Name: "team-a"}, tenant); err != nil {
			t.Fatal(err)
		}
		tenant.Spec.Guarantee = &tenancyv1.Budget{GPUMemory: ptr.To(resource.MustParse(step.guarantee))}
		if err := c.Update(ctx, tenant); err != nil {
			t.Fatal(err)
		}
		status := reconcileTenant(t, tr, "team-a").Status
		cond := meta.FindStatusCondition(status.Conditions, tenancyv1.TenantGuaranteeOverCommitted)
		if cond == nil || cond.Status != step.wantStatus {
			t.Errorf("guarantee %s: condition %s = %+v, want status %s", step.guarantee, tenancyv1.TenantGuaranteeOverCommitted, cond, step.wantStatus)
		}
		if got := rec.reasons[tenancyv1.ReasonGuaranteeOverCommitted]; got != step.wantEvents {
			t.Errorf("guarantee %s: %d %s events, want %d", step.guarantee, got, tenancyv1.ReasonGuaranteeOverCommitted, step.wantEvents)
		}
	}
}
