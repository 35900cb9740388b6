package controller

import (
	"testing"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2/ktesting"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

// TestNewLeaderCountsTheOldLeadersAdmissions: the old leader admitted two
// 18Gi partitions of a 36Gi tenant; the new leader's cache does not show
// those admissions yet (its watch lags). Its first decision, a third
// partition of the tenant, must be a rejection: it counts what the API
// server holds, not what its cache shows. A claim of no tenant is still
// admitted.
func TestNewLeaderCountsTheOldLeadersAdmissions(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	api := newFake(t)
	old := &AdmissionReconciler{client: api, recorder: &fakeRecorder{reasons: map[string]int{}}, ledger: newLedger(), catalog: newDeviceCatalog(), decided: make(chan event.GenericEvent, 10)}
	for _, key := range []types.NamespacedName{{Namespace: "a1", Name: "c1"}, {Namespace: "a2", Name: "c2"}} {
		if _, err := old.Reconcile(ctx, reconcile.Request{NamespacedName: key}); err != nil {
			t.Fatalf("old leader: reconcile %s: %v", key, err)
		}
	}

	state := func(key types.NamespacedName) tenancy.State {
		t.Helper()
		claim := &resourceapi.ResourceClaim{}
		if err := api.Get(ctx, key, claim); err != nil {
			t.Fatal(err)
		}
		return tenancy.ClaimState(claim)
	}
	lagging := newFake(t) // every claim still pending, as before the old leader decided
	rec := &fakeRecorder{reasons: map[string]int{}}
	next := &AdmissionReconciler{
		client: staleReads{Client: api, reader: lagging}, recorder: rec, ledger: newLedger(), catalog: newDeviceCatalog(),
		decided: make(chan event.GenericEvent, 10), catchUp: &leaderCatchUp{reader: api},
	}
	tests := []struct {
		key  types.NamespacedName
		want tenancy.State
	}{
		{types.NamespacedName{Namespace: "a1", Name: "c3"}, tenancy.Rejected},
		{types.NamespacedName{Namespace: "free", Name: "c4"}, tenancy.Admitted},
	}
	for _, tc := range tests {
		if _, err := next.Reconcile(ctx, reconcile.Request{NamespacedName: tc.key}); err != nil {
			t.Fatalf("new leader: reconcile %s: %v", tc.key, err)
		}
		if got := state(tc.key); got != tc.want {
			t.Errorf("new leader decided %s: state %v, want %v", tc.key, got, tc.want)
		}
	}
}
