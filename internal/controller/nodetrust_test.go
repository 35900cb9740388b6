package controller

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2/ktesting"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

// TestAdmissionHoldsNodesToTheirPool: node n1 publishes the devices of the
// fixture; what its Node's admin-set label says decides whom they serve.
// Labelled for team-a's pool, n1 draws no claim through the shipped class
// (a dedicated node posing as a shared one); unlabelled, it draws no claim
// through team-a's dedicated class (a node posing as team-a's), however it
// labels its devices; labelled, team-a's dedicated claim is admitted.
func TestAdmissionHoldsNodesToTheirPool(t *testing.T) {
	dedicated := tenancyv1.DedicatedClassName("team-a", gpuapi.ClassMIG)
	for name, tc := range map[string]struct {
		nodeLabels map[string]string // nil: no Node object
		class      string
		want       tenancy.State
		reason     string
	}{
		"shipped class, plain node":     {map[string]string{}, gpuapi.ClassMIG, tenancy.Admitted, tenancyv1.ReasonAdmitted},
		"shipped class, no Node":        {nil, gpuapi.ClassMIG, tenancy.Admitted, tenancyv1.ReasonAdmitted},
		"shipped class, dedicated node": {map[string]string{tenancyv1.LabelNodePool: "pool-a"}, gpuapi.ClassMIG, tenancy.Rejected, tenancyv1.ReasonPoolMismatch},
		"dedicated class, plain node":   {map[string]string{}, dedicated, tenancy.Rejected, tenancyv1.ReasonPoolMismatch},
		"dedicated class, its node":     {map[string]string{tenancyv1.LabelNodePool: "pool-a"}, dedicated, tenancy.Admitted, tenancyv1.ReasonAdmitted},
		"dedicated class, another pool": {map[string]string{tenancyv1.LabelNodePool: "pool-b"}, dedicated, tenancy.Rejected, tenancyv1.ReasonPoolMismatch},
		"dedicated class, forged label": {map[string]string{"tenancy.tessera.dev/pool": "pool-a"}, dedicated, tenancy.Rejected, tenancyv1.ReasonPoolMismatch},
	} {
		t.Run(name, func(t *testing.T) {
			_, ctx := ktesting.NewTestContext(t)
			c := newFake(t)
			tenant := &tenancyv1.GPUTenant{}
			if err := c.Get(ctx, types.NamespacedName{Name: "team-a"}, tenant); err != nil {
				t.Fatal(err)
			}
			tenant.Spec.DedicatedPool = "pool-a"
			tenant.Spec.AllowedDeviceClasses = append(tenant.Spec.AllowedDeviceClasses, dedicated)
			if err := c.Update(ctx, tenant); err != nil {
				t.Fatal(err)
			}
			if tc.nodeLabels != nil {
				if err := c.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", Labels: tc.nodeLabels}}); err != nil {
					t.Fatal(err)
				}
			}
			key := types.NamespacedName{Namespace: "a1", Name: "c1"}
			claim := &resourceapi.ResourceClaim{}
			if err := c.Get(ctx, key, claim); err != nil {
				t.Fatal(err)
			}
			claim.Spec.Devices.Requests[0].Exactly.DeviceClassName = tc.class
			if err := c.Update(ctx, claim); err != nil {
				t.Fatal(err)
			}
			rec := &fakeRecorder{reasons: map[string]int{}}
			r := &AdmissionReconciler{client: c, recorder: rec, ledger: newLedger(), catalog: newDeviceCatalog(), decided: make(chan event.GenericEvent, 10)}
			if _, err := r.Reconcile(ctx, reconcile.Request{NamespacedName: key}); err != nil {
				t.Fatal(err)
			}
			if got := claimState(ctx, t, c, key); got != tc.want {
				t.Errorf("claim %v, want %v", got, tc.want)
			}
			if rec.reasons[tc.reason] == 0 {
				t.Errorf("no %s event; events: %v", tc.reason, rec.reasons)
			}
		})
	}
}
