package localcluster

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

// admittedClaims counts the claims of the namespaces that the API server
// shows admitted.
func admittedClaims(ctx context.Context, namespaces ...string) (int, error) {
	n := 0
	for _, ns := range namespaces {
		list, err := local.Client.ResourceV1().ResourceClaims(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return 0, err
		}
		for i := range list.Items {
			if tenancy.ClaimState(&list.Items[i]) == tenancy.Admitted {
				n++
			}
		}
	}
	return n, nil
}

// TestTenancyLeaderChangeKeepsBudget runs a second controller replica (a
// standby, as the chart's Deployment with two replicas has) and kills the
// leader mid-flood: the first pods of a tenant whose budget holds two MIG
// partitions are being decided, and more arrive while the standby takes the
// lease over. At no poll do more than two of the tenant's claims stand
// admitted or more than two of its pods bound; in the end exactly two are
// bound, decided by either leader, and the others wait for the budget.
func TestTenancyLeaderChangeKeepsBudget(t *testing.T) {
	m := migMemory(t)
	tenant := newTenant(t, "leader", tenancyv1.GPUTenantSpec{
		AllowedDeviceClasses: []string{gpuapi.ClassMIG},
		Budget:               &tenancyv1.Budget{GPUMemory: resource.NewQuantity(2*m, resource.BinarySI)},
	})
	namespaces := []string{tenantNamespace(t, tenant.Name), tenantNamespace(t, tenant.Name)}
	ctx := testContext(t)

	standby := tenancyController.Replica()
	if err := standby.Start(ctx); err != nil {
		t.Fatalf("start a standby replica: %v", err)
	}
	leaderKilled := false
	t.Cleanup(func() {
		// The standby, now leader, gives the lease back on SIGTERM; the
		// suite's controller then leads again.
		if err := standby.Stop(); err != nil {
			t.Errorf("stop the replica: %v", err)
		}
		if leaderKilled {
			if err := tenancyController.Start(context.Background()); err != nil {
				t.Errorf("restart the controller: %v", err)
			}
		}
	})

	var (
		mu       sync.Mutex
		overshot []string
	)
	check := func(ctx context.Context) (bound, pending int) {
		b, p := boundPods(ctx, namespaces...)
		admitted, err := admittedClaims(ctx, namespaces...)
		if err == nil && admitted > 2 || len(b) > 2 {
			mu.Lock()
			overshot = append(overshot, fmt.Sprintf("%s: %d claims admitted, %d pods bound", time.Now().Format(time.StampMilli), admitted, len(b)))
			mu.Unlock()
		}
		return len(b), len(p)
	}
	watchCtx, stopWatch := context.WithCancel(ctx)
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		_ = wait.PollUntilContextCancel(watchCtx, pollEvery, true, func(ctx context.Context) (bool, error) {
			check(ctx)
			return false, nil
		})
	}()

	var wg sync.WaitGroup
	flood := func(wave int) {
		for _, ns := range namespaces {
			for i := range 3 {
				wg.Go(func() { createPod(t, ns, fmt.Sprintf("w%d-p%d", wave, i), "mig", onTenancyNodes) })
			}
		}
	}
	for _, ns := range namespaces {
		createTemplate(t, ns, "mig", migRequest("gpu"))
	}
	flood(1)
	// Mid-flood: the leader has admitted a first claim.
	err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, waitTimeout, true, func(ctx context.Context) (bool, error) {
		n, err := admittedClaims(ctx, namespaces...)
		return err == nil && n >= 1, nil
	})
	if err != nil {
		t.Fatalf("no claim admitted before the leader change: %v", err)
	}
	tenancyController.Kill()
	leaderKilled = true
	flood(2)
	wg.Wait()

	// The standby takes the lease over once it expires, and decides the rest.
	var bound, pending int
	err = wait.PollUntilContextTimeout(ctx, pollEvery, 2*waitTimeout, true, func(ctx context.Context) (bool, error) {
		bound, pending = check(ctx)
		if bound != 2 || pending != 10 {
			return false, nil
		}
		_, waiting := boundPods(ctx, namespaces...)
		for _, p := range waiting {
			if len(events(ctx, p, tenancyv1.ReasonOverBudget)) == 0 {
				return false, nil
			}
		}
		return true, nil
	})
	stopWatch()
	<-watched
	if err != nil {
		t.Errorf("after the leader change: %v (bound %d, pending %d)", err, bound, pending)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, o := range overshot {
		t.Errorf("budget of 2 exceeded at %s", o)
	}
}

// claimStates counts the claims of ns by tenancy state.
func claimStates(ctx context.Context, ns string) (map[tenancy.State]int, error) {
	list, err := local.Client.ResourceV1().ResourceClaims(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	out := map[tenancy.State]int{}
	for i := range list.Items {
		out[tenancy.ClaimState(&list.Items[i])]++
	}
	return out, nil
}

// TestTenancyDecidesWhileSlicesAreGone: a tenant whose budget holds two MIG
// partitions has one admitted; the controller hangs (frozen) while two more
// are allocated, and the node's slices disappear meanwhile (its kubelet
// restarts: the plugin is stopped and its slices deleted). The controller,
// thawed, decides both with the memory the node last published, while no
// slice of the node exists: one admitted, one over budget. (A controller that
// starts while the slices are gone costs them from the records of their
// admission: TestTenancyControllerStartsWhileSlicesAreGone.)
func TestTenancyDecidesWhileSlicesAreGone(t *testing.T) {
	m := migMemory(t)
	tenant := newTenant(t, "noslices", tenancyv1.GPUTenantSpec{
		AllowedDeviceClasses: []string{gpuapi.ClassMIG},
		Budget:               &tenancyv1.Budget{GPUMemory: resource.NewQuantity(2*m, resource.BinarySI)},
	})
	ns := tenantNamespace(t, tenant.Name)
	ctx := testContext(t)
	node := local.Node(tenancyNode.Name)
	if node == nil {
		t.Fatalf("no node %s", tenancyNode.Name)
	}
	createTemplate(t, ns, "mig", migRequest("gpu"))
	waitAllocated(t, createPod(t, ns, "first", "mig", onTenancyNodes))

	// The plugin stops first (its slices stay until deleted), so that the
	// frozen spell below is short.
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
	if err := tenancyController.Freeze(); err != nil {
		t.Fatal(err)
	}
	thawed := false
	thaw := func() {
		if !thawed {
			thawed = true
			if err := tenancyController.Thaw(); err != nil {
				t.Errorf("thaw the controller: %v", err)
			}
		}
	}
	t.Cleanup(thaw)
	for _, name := range []string{"second", "third"} {
		createPod(t, ns, name, "mig", onTenancyNodes)
	}
	err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 6*time.Second, true, func(ctx context.Context) (bool, error) {
		states, err := claimStates(ctx, ns)
		return err == nil && states[tenancy.Admitted] == 1 && states[tenancy.Pending] == 2, nil
	})
	if err != nil {
		thaw()
		t.Fatalf("two claims allocated and awaiting the controller: %v", err)
	}
	slices, err := node.Slices(ctx)
	if err != nil {
		thaw()
		t.Fatal(err)
	}
	for _, s := range slices {
		if err := local.Client.ResourceV1().ResourceSlices().Delete(ctx, s.Name, metav1.DeleteOptions{}); err != nil {
			thaw()
			t.Fatalf("delete slice %s: %v", s.Name, err)
		}
	}
	thaw()

	err = wait.PollUntilContextTimeout(ctx, pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		states, err := claimStates(ctx, ns)
		if err != nil {
			return false, nil
		}
		if states[tenancy.Admitted] > 2 {
			return false, fmt.Errorf("%d claims admitted, budget holds 2", states[tenancy.Admitted])
		}
		// A rejected claim is deallocated by the scheduler, which cannot
		// allocate it again while the node publishes nothing.
		return states[tenancy.Admitted] == 2 && states[tenancy.Pending] == 0, nil
	})
	if err != nil {
		t.Fatalf("deciding while the node's slices are gone: %v", err)
	}
	if left, err := node.Slices(ctx); err != nil || len(left) != 0 {
		t.Errorf("the node publishes %d slices (%v) although its plugin is stopped: the test did not decide without them", len(left), err)
	}
	if err := node.StartPlugin(ctx); err != nil {
		t.Fatalf("restart the plugin of %s: %v", node.Name, err)
	}
	republished = true
}
