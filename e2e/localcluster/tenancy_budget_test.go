package localcluster

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/apimachinery/pkg/util/wait"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/internal/testing/builder"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

// migMemory is the memory the tenancy node publishes for a 1g.18gb partition.
func migMemory(t *testing.T) int64 {
	t.Helper()
	list, err := local.Client.ResourceV1().ResourceSlices().List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	memory := tenancy.DeviceMemory(ptrsOf(list.Items))
	m, ok := memory[tenancy.DeviceID{Driver: gpuapi.DriverName, Pool: tenancyNode.Name, Device: gpuapi.MIGDeviceName(0, "1g.18gb", 0)}]
	if !ok {
		t.Fatal("the tenancy node publishes no 1g.18gb partition at placement 0")
	}
	return m
}

func ptrsOf[T any](items []T) []*T {
	out := make([]*T, len(items))
	for i := range items {
		out[i] = &items[i]
	}
	return out
}

// boundPods are the pods of the namespaces that the scheduler has bound.
func boundPods(ctx context.Context, namespaces ...string) (bound, pending []*corev1.Pod) {
	for _, ns := range namespaces {
		list, err := local.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			continue
		}
		for i := range list.Items {
			if list.Items[i].Spec.NodeName != "" {
				bound = append(bound, &list.Items[i])
			} else {
				pending = append(pending, &list.Items[i])
			}
		}
	}
	return bound, pending
}

// TestTenancyBudgetHoldsUnderConcurrency starts six pods at once in two
// namespaces of a tenant whose GPU memory budget holds two MIG partitions:
// exactly two bind, the others wait with the reason on the pod, and one more
// binds when a running pod goes. It also checks the tenant's status, its
// printer columns and its metrics.
func TestTenancyBudgetHoldsUnderConcurrency(t *testing.T) {
	m := migMemory(t)
	budget := resource.NewQuantity(2*m, resource.BinarySI)
	tenant := newTenant(t, "budget", tenancyv1.GPUTenantSpec{
		AllowedDeviceClasses: []string{gpuapi.ClassMIG},
		Budget:               &tenancyv1.Budget{GPUMemory: budget},
	})
	namespaces := []string{tenantNamespace(t, tenant.Name), tenantNamespace(t, tenant.Name)}
	ctx := testContext(t)

	var wg sync.WaitGroup
	for _, ns := range namespaces {
		createTemplate(t, ns, "mig", migRequest("gpu"))
		for i := range 3 {
			wg.Go(func() { createPod(t, ns, fmt.Sprintf("p%d", i), "mig", onTenancyNodes) })
		}
	}
	wg.Wait()

	// Wait until two are bound and the four others have each been refused
	// at least once for the budget; at no poll may more than two be bound.
	var bound, pending []*corev1.Pod
	err := wait.PollUntilContextTimeout(ctx, pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		bound, pending = boundPods(ctx, namespaces...)
		if len(bound) > 2 {
			return false, fmt.Errorf("%d pods bound, budget holds 2", len(bound))
		}
		refused := 0
		for _, p := range pending {
			if len(events(ctx, p, tenancyv1.ReasonOverBudget)) > 0 {
				refused++
			}
		}
		return len(bound) == 2 && refused == len(pending) && len(pending) == 4, nil
	})
	if err != nil {
		t.Fatalf("budget: %v (bound %d, pending %d)", err, len(bound), len(pending))
	}
	ev := events(ctx, pending[0], tenancyv1.ReasonOverBudget)
	if msg := ev[len(ev)-1].Message; !strings.Contains(msg, "GPUTenant "+tenant.Name+" is over budget: gpuMemory") {
		t.Errorf("pod event %q does not say which budget", msg)
	}
	status := waitTenantCondition(t, tenant.Name, tenancyv1.TenantBudgetExhausted, metav1.ConditionTrue)
	if got := status.Status.Usage.GPUMemory; got.Cmp(*budget) != 0 {
		t.Errorf("usage %s, want the budget %s", got.String(), budget.String())
	}
	checkTable(t, tenant.Name, budget.String())
	checkDecisionMetric(t, tenant.Name, "admitted")
	checkDecisionMetric(t, tenant.Name, "rejected")

	// A running pod goes; exactly one waiting pod takes its place.
	deletePod(t, bound[0])
	err = wait.PollUntilContextTimeout(ctx, pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		now, _ := boundPods(ctx, namespaces...)
		if len(now) > 2 {
			return false, fmt.Errorf("%d pods bound, budget holds 2", len(now))
		}
		for _, p := range now {
			if p.UID == bound[0].UID {
				return false, nil
			}
		}
		return len(now) == 2, nil
	})
	if err != nil {
		t.Fatalf("after a pod went: %v", err)
	}
}

// checkTable checks what kubectl get gput prints for the tenant.
func checkTable(t *testing.T, name, budget string) {
	t.Helper()
	raw, err := local.Client.CoreV1().RESTClient().Get().AbsPath("/apis/tenancy.tessera.dev/v1alpha1/gputenants/"+name).
		SetHeader("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io").DoRaw(t.Context())
	if err != nil {
		t.Fatalf("get table: %v", err)
	}
	var table metav1.Table
	if err := json.Unmarshal(raw, &table); err != nil {
		t.Fatal(err)
	}
	cells := map[string]any{}
	for i, c := range table.ColumnDefinitions {
		if len(table.Rows) == 1 {
			cells[c.Name] = table.Rows[0].Cells[i]
		}
	}
	for col, want := range map[string]string{"Memory": budget, "Budget": budget, "Ready": "True"} {
		if fmt.Sprint(cells[col]) != want {
			t.Errorf("kubectl get gput column %s = %v, want %s (row %v)", col, cells[col], want, cells)
		}
	}
	if ns := fmt.Sprint(cells["Namespaces"]); !strings.Contains(ns, "e2e-") {
		t.Errorf("kubectl get gput column Namespaces = %s", ns)
	}
}

// checkDecisionMetric checks that the controller counted a decision of the
// tenant, scraped as a ServiceAccount bound to the chart's metrics-reader
// role would.
func checkDecisionMetric(t *testing.T, tenant, decision string) {
	t.Helper()
	ctx := testContext(t)
	body := scrapeAuthorised(t, ctx, tenancyController.MetricsAddress, serviceAccountToken(t, ctx, "e2e-scraper-"+rand.String(4), metricsReader))
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, "tessera_tenant_allocation_decisions_total{") &&
			strings.Contains(line, `decision="`+decision+`"`) && strings.Contains(line, `tenant="`+tenant+`"`) {
			return
		}
	}
	t.Errorf("no %s decision for tenant %s in the controller's metrics", decision, tenant)
}

// TestTenancyControllerDown kills the controller: claims the tenant may not
// make are still refused, and a pod whose allocation awaits the budget check
// waits instead of binding, then binds once the controller is back.
func TestTenancyControllerDown(t *testing.T) {
	tenant := newTenant(t, "down", tenancyv1.GPUTenantSpec{
		AllowedDeviceClasses: []string{gpuapi.ClassMIG},
		Budget:               &tenancyv1.Budget{Devices: map[string]int64{gpuapi.ClassMIG: 4}},
	})
	ns := tenantNamespace(t, tenant.Name)
	ctx := testContext(t)
	createTemplate(t, ns, "mig", migRequest("gpu"))

	tenancyController.Kill()
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			if err := tenancyController.Start(context.Background()); err != nil {
				t.Errorf("restart controller: %v", err)
			}
		}
	})
	wantRefused(t, createClaim(ctx, ns, claimSpec(builder.MakeRequest("gpu", gpuapi.ClassGPU).Obj())), "GPUTenant "+tenant.Name)

	pod := createPod(t, ns, "waits", "mig", onTenancyNodes)
	// The scheduler re-checks binding conditions every 5 s: across two
	// re-checks the pod must stay unbound.
	err := wait.PollUntilContextTimeout(ctx, pollEvery, 12*time.Second, true, func(ctx context.Context) (bool, error) {
		p, err := local.Client.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		if p.Spec.NodeName != "" {
			return false, fmt.Errorf("pod bound to %s without the controller", p.Spec.NodeName)
		}
		return false, nil
	})
	if err != nil && !wait.Interrupted(err) {
		t.Fatal(err)
	}
	if err := tenancyController.Start(ctx); err != nil {
		t.Fatalf("restart controller: %v", err)
	}
	restarted = true
	waitAllocated(t, pod)
}

// TestTenancyDedicatedPool checks that a tenant's dedicated pool is reachable
// through its own classes only.
func TestTenancyDedicatedPool(t *testing.T) {
	tenant := newTenant(t, "pooled", tenancyv1.GPUTenantSpec{DedicatedPool: poolA})
	ns := tenantNamespace(t, tenant.Name)
	ctx := testContext(t)
	class := tenancyv1.DedicatedClassName(tenant.Name, gpuapi.ClassMIG)
	err := wait.PollUntilContextTimeout(ctx, pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		_, err := local.Client.ResourceV1().DeviceClasses().Get(ctx, class, metav1.GetOptions{})
		return err == nil, nil
	})
	if err != nil {
		t.Fatalf("dedicated class %s never created", class)
	}
	createTemplate(t, ns, "dedicated", builder.MakeRequest("gpu", class).Profile("1g.18gb").Obj())
	a := waitAllocated(t, createPod(t, ns, "dedicated", "dedicated", onTenancyNodes))
	if pool := a.Devices()[0].Pool; pool != poolNode.Name {
		t.Errorf("dedicated class allocated from pool %s, want the dedicated node %s", pool, poolNode.Name)
	}

	// Outside the tenant, the shipped class never reaches the pool's GPU.
	free := newNamespace(t)
	createTemplate(t, free, "mig", migRequest("gpu"))
	outsider := createPod(t, free, "outsider", "mig", func(p *corev1.Pod) {
		onTenancyNodes(p)
		p.Spec.NodeSelector = map[string]string{"kubernetes.io/hostname": poolNode.Name}
	})
	waitEvent(t, outsider, "FailedScheduling")
	if p, err := local.Client.CoreV1().Pods(free).Get(ctx, outsider.Name, metav1.GetOptions{}); err != nil || p.Spec.NodeName != "" {
		t.Errorf("a pod outside the tenant got onto the dedicated node (err %v)", err)
	}

	// Without the pool, the classes go.
	updateTenant(t, tenant.Name, func(t *tenancyv1.GPUTenant) { t.Spec.DedicatedPool = "" })
	err = wait.PollUntilContextTimeout(ctx, pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		_, err := local.Client.ResourceV1().DeviceClasses().Get(ctx, class, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	if err != nil {
		t.Errorf("dedicated class %s still there without a pool", class)
	}
}

// TestTenancyNamespaceQuota checks the per-namespace ResourceQuota: created
// from namespaceQuota, enforced by the API server, removed with the tenant.
func TestTenancyNamespaceQuota(t *testing.T) {
	tenant := newTenant(t, "quota", tenancyv1.GPUTenantSpec{
		AllowedDeviceClasses: []string{gpuapi.ClassMIG},
		NamespaceQuota:       &tenancyv1.NamespaceQuota{Devices: map[string]int64{gpuapi.ClassMIG: 1}},
	})
	ns := tenantNamespace(t, tenant.Name)
	ctx := testContext(t)
	quotas := local.Client.CoreV1().ResourceQuotas(ns)
	err := wait.PollUntilContextTimeout(ctx, pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		q, err := quotas.Get(ctx, tenancyv1.QuotaName, metav1.GetOptions{})
		return err == nil && q.Status.Hard != nil, nil
	})
	if err != nil {
		t.Fatal("no enforced ResourceQuota in the tenant's namespace")
	}
	claims := local.Client.ResourceV1().ResourceClaims(ns)
	first := &resourceapi.ResourceClaim{ObjectMeta: metav1.ObjectMeta{Name: "first"}, Spec: claimSpec(migRequest("gpu"))}
	if _, err := claims.Create(ctx, first, metav1.CreateOptions{}); err != nil {
		t.Fatalf("first claim refused: %v", err)
	}
	second := &resourceapi.ResourceClaim{ObjectMeta: metav1.ObjectMeta{Name: "second"}, Spec: claimSpec(migRequest("gpu"))}
	err = wait.PollUntilContextTimeout(ctx, pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		_, err := claims.Create(ctx, second, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		return err != nil, nil
	})
	if err != nil {
		t.Fatal("a second MIG claim passed a quota of one")
	}
	_, err = claims.Create(ctx, second, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	wantRefused(t, err, "exceeded quota")

	if err := tenants.Delete(ctx, tenant); err != nil {
		t.Fatal(err)
	}
	err = wait.PollUntilContextTimeout(ctx, pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		_, err := quotas.Get(ctx, tenancyv1.QuotaName, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	if err != nil {
		t.Error("the tenant's ResourceQuota outlived it")
	}
}
