package localcluster

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/e2e/framework/cluster"
	"github.com/tessera-gpu/tessera/internal/controller"
	"github.com/tessera-gpu/tessera/internal/testing/builder"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

// TestTenancyControllerStartsWhileSlicesAreGone: a tenant whose budget holds
// two MIG partitions has one admitted on its dedicated pool's node; that
// node's plugin stops and its slices are deleted (its kubelet restarts), and
// the controller restarts meanwhile, so that it has never seen the node's
// devices. The tenant's next two claims, on another node, are decided before
// the slices come back: one admitted, one over budget. The new controller
// costs the first claim from the memory recorded with its admission.
func TestTenancyControllerStartsWhileSlicesAreGone(t *testing.T) {
	m := migMemory(t)
	tenant := newTenant(t, "restart", tenancyv1.GPUTenantSpec{
		AllowedDeviceClasses: []string{gpuapi.ClassMIG},
		DedicatedPool:        poolA,
		Budget:               &tenancyv1.Budget{GPUMemory: resource.NewQuantity(2*m, resource.BinarySI)},
	})
	ns := tenantNamespace(t, tenant.Name)
	ctx := testContext(t)
	node := local.Node(poolNode.Name)
	if node == nil {
		t.Fatalf("no node %s", poolNode.Name)
	}
	createTemplate(t, ns, "dedicated", builder.MakeRequest("gpu", waitDedicatedClass(ctx, t, tenant.Name, gpuapi.ClassMIG)).Profile("1g.18gb").Obj())
	createTemplate(t, ns, "mig", migRequest("gpu"))
	first := waitAllocated(t, createPod(t, ns, "first", "dedicated", onTenancyNodes))
	err := wait.PollUntilContextTimeout(ctx, pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		states, err := claimStates(ctx, ns)
		return err == nil && states[tenancy.Admitted] == 1, nil
	})
	if err != nil || first.Devices()[0].Pool != poolNode.Name {
		t.Fatalf("first claim admitted on %s: %v (allocated on %s)", poolNode.Name, err, first.Devices()[0].Pool)
	}

	if err := node.Plugin().Stop(30 * time.Second); err != nil {
		t.Fatalf("stop the plugin of %s: %v", node.Name, err)
	}
	republished := false
	t.Cleanup(func() {
		if !republished {
			if err := node.StartPlugin(context.Background()); err != nil {
				t.Errorf("restart the plugin of %s: %v", node.Name, err)
			}
		}
	})
	slices, err := node.Slices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range slices {
		if err := local.Client.ResourceV1().ResourceSlices().Delete(ctx, s.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatalf("delete slice %s: %v", s.Name, err)
		}
	}
	if err := tenancyController.Stop(); err != nil {
		t.Fatalf("stop the controller: %v", err)
	}
	if err := tenancyController.Start(ctx); err != nil {
		t.Fatalf("start the controller: %v", err)
	}

	second, third := createPod(t, ns, "second", "mig", onTenancyNodes), createPod(t, ns, "third", "mig", onTenancyNodes)
	err = wait.PollUntilContextTimeout(ctx, pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		states, err := claimStates(ctx, ns)
		if err != nil {
			return false, nil
		}
		if states[tenancy.Admitted] > 2 {
			return false, fmt.Errorf("%d claims admitted, budget holds 2", states[tenancy.Admitted])
		}
		refused := len(events(ctx, second, tenancyv1.ReasonOverBudget)) + len(events(ctx, third, tenancyv1.ReasonOverBudget))
		return states[tenancy.Admitted] == 2 && refused > 0, nil
	})
	if err != nil {
		t.Fatalf("deciding after a restart while %s's slices are gone: %v", node.Name, err)
	}
	if left, err := node.Slices(ctx); err != nil || len(left) != 0 {
		t.Errorf("%s publishes %d slices (%v) although its plugin is stopped: the test did not decide without them", node.Name, len(left), err)
	}
	if err := node.StartPlugin(ctx); err != nil {
		t.Fatalf("restart the plugin of %s: %v", node.Name, err)
	}
	republished = true
}

// TestTenancyDecisionFence: the controller records its leader-election
// identity and the device's memory with each decision, and the API server
// refuses a decision written with the controller's own credentials but
// recorded as made by a replica that does not hold the Lease, as a deposed
// leader's late write would be.
func TestTenancyDecisionFence(t *testing.T) {
	m := migMemory(t)
	tenant := newTenant(t, "fence", tenancyv1.GPUTenantSpec{
		AllowedDeviceClasses: []string{gpuapi.ClassMIG},
		Budget:               &tenancyv1.Budget{GPUMemory: resource.NewQuantity(2*m, resource.BinarySI)},
	})
	ns := tenantNamespace(t, tenant.Name)
	ctx := testContext(t)
	createTemplate(t, ns, "mig", migRequest("gpu"))
	a := waitAllocated(t, createPod(t, ns, "fenced", "mig", onTenancyNodes))
	claims := local.Client.ResourceV1().ResourceClaims(ns)
	var lease *coordinationv1.Lease
	err := wait.PollUntilContextTimeout(ctx, pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		c, err := claims.Get(ctx, a.Claim.Name, metav1.GetOptions{})
		if err != nil || tenancy.ClaimState(c) != tenancy.Admitted {
			return false, nil
		}
		a.Claim = c
		lease, err = local.Client.CoordinationV1().Leases(cluster.ReleaseNamespace).Get(ctx, controller.LeaderElectionID, metav1.GetOptions{})
		return err == nil, nil
	})
	if err != nil {
		t.Fatalf("claim %s not admitted: %v", a.Claim.Name, err)
	}
	rec, ok := tenancy.DecodeRecord(a.Claim.Status.Devices[0].Data)
	if !ok || lease.Spec.HolderIdentity == nil || rec.Holder != *lease.Spec.HolderIdentity || rec.DeviceMemory != m {
		t.Fatalf("decision record %+v (found %v), want the Lease's holder %v and the device's memory %d", rec, ok, lease.Spec.HolderIdentity, m)
	}

	asController := clientFor(t, tenancyController.Kubeconfig())
	for name, change := range map[string]func(*tenancyv1.DecisionRecord){
		"admission rewritten by a deposed replica": func(r *tenancyv1.DecisionRecord) { r.Holder = "deposed-" + r.Holder },
		"admission without a holder":               func(r *tenancyv1.DecisionRecord) { r.Holder = "" },
	} {
		claim := a.Claim.DeepCopy()
		stale := rec
		change(&stale)
		data, err := tenancy.EncodeRecord(stale)
		if err != nil {
			t.Fatal(err)
		}
		claim.Status.Devices[0].Data = data
		_, err = asController.ResourceV1().ResourceClaims(ns).UpdateStatus(ctx, claim, metav1.UpdateOptions{})
		if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "leader-election Lease") {
			t.Errorf("%s: the API server answered %v, want a refusal by the decision fence", name, err)
		}
	}
	after, err := claims.Get(ctx, a.Claim.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := tenancy.DecodeRecord(after.Status.Devices[0].Data); got != rec {
		t.Errorf("the record changed to %+v", got)
	}
}
