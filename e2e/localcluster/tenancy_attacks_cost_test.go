package localcluster

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/internal/testing/builder"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

// The budget attacks of TestTenancyAttackMatrix: shares shaped or requested
// so that they keep more of the GPUs from other tenants than their memory
// says. Each checks what the budget counts, where users see it, and that
// the tenant never holds more than its budget's worth of GPUs.

// sharedGPUMemory is the memory the tenancy node publishes for gpu-0-shared,
// the whole GPU's.
func sharedGPUMemory(ctx context.Context, t *testing.T) int64 {
	t.Helper()
	list, err := local.Client.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m, ok := tenancy.DeviceMemory(ptrsOf(list.Items))[tenancy.DeviceID{Driver: gpuapi.DriverName, Pool: tenancyNode.Name, Device: "gpu-0-shared"}]
	if !ok {
		t.Fatal("the tenancy node publishes no gpu-0-shared")
	}
	return m
}

// tenantRow is the row kubectl get gput prints for a tenant, column name ->
// cell, read as kubectl reads it: the API server's Table output, whose cells
// the CRD's printer columns make.
func tenantRow(ctx context.Context, name string) (map[string]string, error) {
	raw, err := local.Client.CoreV1().RESTClient().Get().AbsPath("/apis/tenancy.tessera.dev/v1alpha1/gputenants/"+name).
		SetHeader("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io").DoRaw(ctx)
	if err != nil {
		return nil, fmt.Errorf("get table: %w", err)
	}
	var table metav1.Table
	if err := json.Unmarshal(raw, &table); err != nil {
		return nil, err
	}
	if len(table.Rows) != 1 {
		return nil, fmt.Errorf("%d rows for GPUTenant %s", len(table.Rows), name)
	}
	row := map[string]string{}
	for i, c := range table.ColumnDefinitions {
		if i < len(table.Rows[0].Cells) && table.Rows[0].Cells[i] != nil {
			row[c.Name] = fmt.Sprint(table.Rows[0].Cells[i])
		}
	}
	return row, nil
}

// waitMemoryColumn waits until kubectl get gput's Memory column for the
// tenant reads want bytes of held GPU memory (a Kubernetes quantity, as
// budget.gpuMemory is written), and returns the row.
func waitMemoryColumn(ctx context.Context, t *testing.T, name string, want int64, why string) map[string]string {
	t.Helper()
	var row map[string]string
	var rowErr error
	err := wait.PollUntilContextTimeout(ctx, pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		got, err := tenantRow(ctx, name)
		if rowErr = err; err != nil {
			return false, nil
		}
		row = got
		q, err := resource.ParseQuantity(row["Memory"])
		return err == nil && q.Value() == want, nil
	})
	if err != nil {
		t.Fatalf("kubectl get gput %s: Memory column %q, want %s (%d bytes: %s); row %v, last error %v",
			name, row["Memory"], resource.NewQuantity(want, resource.BinarySI), want, why, row, rowErr)
	}
	return row
}

// onTenancyNodeOnly pins a pod to the tenancy node (two H200s).
func onTenancyNodeOnly(p *corev1.Pod) {
	onTenancyNodes(p)
	p.Spec.NodeSelector["kubernetes.io/hostname"] = tenancyNode.Name
}

// waitTenancyGPUsFree waits until no tenant holds a share of the tenancy
// node's GPUs (earlier tests' shares may still be going).
func waitTenancyGPUsFree(ctx context.Context, t *testing.T) {
	t.Helper()
	for _, gpu := range tenancyGPUs() {
		waitTaintValue(ctx, t, gpu, tenancyv1.GroupFree)
	}
	// The case before may have left a binding cycle in a scheduler, its
	// devices in flight there although its pods and claims are gone (see
	// bindingCycles): a pod tried meanwhile waits for the queue's flush.
	var why string
	if err := wait.PollUntilContextTimeout(ctx, pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		why = bindingCycles(ctx)
		return why == "", nil
	}); err != nil {
		t.Fatalf("the schedulers still bind after %s: %s", waitTimeout, why)
	}
}

// deletePodsAndClaims deletes pods and waits until ns holds no claim, so
// that the GPUs are free for the next case.
func deletePodsAndClaims(ctx context.Context, t *testing.T, ns string, pods ...*corev1.Pod) {
	t.Helper()
	for _, p := range pods {
		// Not deletePod: the test's own context is done in its cleanups.
		if err := local.Client.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("delete pod %s: %v", p.Name, err)
		}
	}
	err := wait.PollUntilContextTimeout(ctx, pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		list, err := local.Client.ResourceV1().ResourceClaims(ns).List(ctx, metav1.ListOptions{})
		return err == nil && len(list.Items) == 0, nil
	})
	if err != nil {
		t.Errorf("namespace %s still holds claims after its pods went: %v", ns, err)
	}
}

// admittedGPUs are the GPUs (pool/device) that ns's admitted claims hold,
// and the number of admitted claims.
func admittedGPUs(ctx context.Context, ns string) (map[string]bool, int, error) {
	list, err := local.Client.ResourceV1().ResourceClaims(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, 0, err
	}
	gpus, admitted := map[string]bool{}, 0
	for i := range list.Items {
		c := &list.Items[i]
		if tenancy.ClaimState(c) != tenancy.Admitted {
			continue
		}
		admitted++
		for _, r := range c.Status.Allocation.Devices.Results {
			gpus[r.Pool+"/"+r.Device] = true
		}
	}
	return gpus, admitted, nil
}

// attackMixedShares: a tenant (budget three GPUs' memory) holds a share
// {memory: 256Mi, compute: 100} and a share {memory: 256Mi} (the request
// policy's default compute, 10): 512Mi by memory. The first fills its GPU's
// compute, so the second lands on the tenancy node's other GPU. kubectl get
// gput's Memory column shows the held GPU memory of docs/tenancy.md's rule,
// in the unit of the Budget column: as Exclusive (the default), both GPUs'
// memory; switched to Any, the first GPU's memory (compute dominates) plus a
// tenth of the second's, rounded up.
func attackMixedShares(ctx context.Context, t *testing.T, tenant *tenancyv1.GPUTenant, ns string) {
	t.Helper()
	waitShapedAs(ctx, t, ns, tenant)
	waitTenancyGPUsFree(ctx, t)
	gpu := sharedGPUMemory(ctx, t)
	budget := resource.NewQuantity(3*gpu, resource.BinarySI)
	updateTenant(t, tenant.Name, func(g *tenancyv1.GPUTenant) { g.Spec.Budget = &tenancyv1.Budget{GPUMemory: budget} })

	createTemplate(t, ns, "full-compute", builder.MakeRequest("gpu", gpuapi.ClassShared).Memory("256Mi").Compute(100).Obj())
	createTemplate(t, ns, "small", builder.MakeRequest("gpu", gpuapi.ClassShared).Memory("256Mi").Obj())
	full := createPod(t, ns, "full-compute", "full-compute", onTenancyNodeOnly)
	waitAllocated(t, full)
	small := createPod(t, ns, "small", "small", onTenancyNodeOnly)
	waitAllocated(t, small)
	t.Cleanup(func() { deletePodsAndClaims(context.WithoutCancel(ctx), t, ns, full, small) })

	var gpus map[string]bool
	err := wait.PollUntilContextTimeout(ctx, pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		var admitted int
		var err error
		gpus, admitted, err = admittedGPUs(ctx, ns)
		return err == nil && admitted == 2, nil
	})
	if err != nil {
		t.Fatalf("the two shares were not both admitted on a budget of %s: %v", budget, err)
	}
	if len(gpus) != 2 {
		t.Fatalf("the shares hold %v, want two GPUs (the first takes all of its GPU's compute)", gpus)
	}

	row := waitMemoryColumn(ctx, t, tenant.Name, 2*gpu, "Exclusive: each GPU it holds a share of, whole")
	if q, err := resource.ParseQuantity(row["Budget"]); err != nil || q.Cmp(*budget) != 0 {
		t.Errorf("kubectl get gput %s: Budget column %q, want %s", tenant.Name, row["Budget"], budget)
	}
	updateTenant(t, tenant.Name, func(g *tenancyv1.GPUTenant) { g.Spec.Sharing = tenancyv1.SharingAny })
	waitMemoryColumn(ctx, t, tenant.Name, gpu+(gpu*10+99)/100, "Any: the dominant fractions, 100 % and 10 % of compute")
}

// attackTinyShares: a tenant whose budget is one GPU's memory asks for a
// {memory: 256Mi, compute: 100} share of each of the tenancy node's two
// GPUs (512Mi by memory). Its goal is to keep both GPUs from everyone else;
// at no moment do its admitted claims hold more than one GPU, and the
// other share is refused over budget.
func attackTinyShares(ctx context.Context, t *testing.T, tenant *tenancyv1.GPUTenant, ns string) {
	t.Helper()
	waitShapedAs(ctx, t, ns, tenant)
	waitTenancyGPUsFree(ctx, t)
	gpu := sharedGPUMemory(ctx, t)
	updateTenant(t, tenant.Name, func(g *tenancyv1.GPUTenant) {
		g.Spec.Budget = &tenancyv1.Budget{GPUMemory: resource.NewQuantity(gpu, resource.BinarySI)}
	})
	createTemplate(t, ns, "tiny", builder.MakeRequest("gpu", gpuapi.ClassShared).Memory("256Mi").Compute(100).Obj())
	pods := []*corev1.Pod{createPod(t, ns, "tiny-0", "tiny", onTenancyNodeOnly), createPod(t, ns, "tiny-1", "tiny", onTenancyNodeOnly)}
	t.Cleanup(func() { deletePodsAndClaims(context.WithoutCancel(ctx), t, ns, pods...) })

	var gpus map[string]bool
	var admitted int
	var refused bool
	err := wait.PollUntilContextTimeout(ctx, pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		var err error
		if gpus, admitted, err = admittedGPUs(ctx, ns); err != nil {
			return false, nil
		}
		if len(gpus) > 1 {
			return false, fmt.Errorf("the tenant's admitted shares hold %d GPUs (%v) on a budget of one GPU's memory", len(gpus), gpus)
		}
		for _, p := range pods {
			for _, ev := range events(ctx, p, tenancyv1.ReasonOverBudget) {
				refused = refused || strings.Contains(ev.Message, "gpuMemory")
			}
		}
		return admitted == 1 && refused, nil
	})
	if err != nil {
		t.Fatalf("tiny shares: %v (admitted %d holding %v; OverBudget seen: %v; events: %s; %s)", err, admitted, gpus, refused, eventSummary(pods[0]), eventSummary(pods[1]))
	}
}

// extendedResourcePod is a pod on the tenancy node whose container asks for
// one device of class through DRA's extended resource
// (deviceclass.resource.kubernetes.io/<class>, which every DeviceClass
// serves): kube-scheduler makes its claim itself. The caller deletes it.
func extendedResourcePod(ctx context.Context, t *testing.T, ns, name, class string) *corev1.Pod {
	t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{{
				Name: "ctr", Image: "registry.k8s.io/pause:3.10",
				Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{
					corev1.ResourceName(resourceapi.ResourceDeviceClassPrefix + class): resource.MustParse("1"),
				}},
			}},
			TerminationGracePeriodSeconds: new(int64(5)),
		},
	}
	onTenancyNodeOnly(pod)
	pod, err := local.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod %s: %v", name, err)
	}
	return pod
}

// waitExtendedResourceRunning waits until pod, an extendedResourcePod, runs
// with the device of the claim kube-scheduler made for it: the kubelet
// prepared that claim and its container got the device.
func waitExtendedResourceRunning(t *testing.T, pod *corev1.Pod) {
	t.Helper()
	running := waitRunning(t, pod)
	if running.Status.ExtendedResourceClaimStatus == nil {
		t.Fatalf("pod %s runs without the claim for its extended resource in its status", pod.Name)
	}
	if edits := containerEdits(t, running, "ctr"); len(edits.CDIDevices) != 1 {
		t.Fatalf("pod %s runs with CDI devices %v, want the one of claim %s", pod.Name, edits.CDIDevices, running.Status.ExtendedResourceClaimStatus.ResourceClaimName)
	}
}

// waitPodRefused waits until pod has an event of reason whose message
// contains want; the pod is never bound meanwhile, and no claim of its
// namespace is admitted.
func waitPodRefused(ctx context.Context, t *testing.T, pod *corev1.Pod, reason, want string) {
	t.Helper()
	err := wait.PollUntilContextTimeout(ctx, pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		p, err := local.Client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		if p.Spec.NodeName != "" {
			return false, fmt.Errorf("pod %s was bound to %s", pod.Name, p.Spec.NodeName)
		}
		for _, ev := range events(ctx, pod, reason) {
			if strings.Contains(ev.Message, want) {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("no %s event containing %q: %v; events: %s", reason, want, err, eventSummary(pod))
	}
	assertNotBoundNorAdmitted(ctx, t, pod, "pod "+pod.Name)
}

// attackExtendedResource: a tenant's pods ask for a share
// (shared.gpu.tessera.dev) and whole GPUs (gpu.tessera.dev) through DRA's
// extended resources instead of claims, to get devices that no budget
// counts. The budget (ns's tenant: room for one GPU) holds: the first whole
// GPU is allocated, admitted and runs, the second is refused OverBudget and
// never bound. The share is never allocated on the tenancy node: every
// time-shared GPU there carries the sharing taint (sharing.free when no group
// holds it), and the claim kube-scheduler makes for an extended resource has
// no tolerations and is allocated before it exists in the API, where the
// sharing policies would add them.
func attackExtendedResource(ctx context.Context, t *testing.T, ns string) {
	t.Helper()
	waitTenancyGPUsFree(ctx, t)
	// Deleted together: deletePodsAndClaims waits until ns holds no claim.
	var pods []*corev1.Pod
	t.Cleanup(func() { deletePodsAndClaims(context.WithoutCancel(ctx), t, ns, pods...) })
	pod := func(name, class string) *corev1.Pod {
		p := extendedResourcePod(ctx, t, ns, name, class)
		pods = append(pods, p)
		return p
	}
	share := pod("share", gpuapi.ClassShared)
	waitPodRefused(ctx, t, share, "FailedScheduling", "cannot allocate all claims")

	first := pod("gpu-first", gpuapi.ClassGPU)
	waitExtendedResourceRunning(t, first)
	if len(events(ctx, first, tenancyv1.ReasonAdmitted)) == 0 {
		t.Fatalf("pod %s runs without an Admitted event: %s", first.Name, eventSummary(first))
	}
	second := pod("gpu-second", gpuapi.ClassGPU)
	var admitted []string
	err := wait.PollUntilContextTimeout(ctx, pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		return refusedOverBudget(ctx, second, "gpuMemory")
	})
	if err != nil {
		t.Fatalf("second GPU: no OverBudget event naming gpuMemory: %v; events: %s", err, eventSummary(second))
	}
	// The budget holds: one device of the namespace admitted, the first's.
	claims, err := local.Client.ResourceV1().ResourceClaims(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range claims.Items {
		for _, d := range c.Status.Devices {
			if meta.IsStatusConditionTrue(d.Conditions, tenancyv1.ConditionAdmitted) {
				admitted = append(admitted, c.Name+" "+d.Device)
			}
		}
	}
	if len(admitted) != 1 || !strings.HasPrefix(admitted[0], first.Name+"-extended-resources-") {
		t.Errorf("admitted %v, want the first pod's GPU only", admitted)
	}
}

// refusedOverBudget is a poll step: done once an OverBudget event on pod
// names resource, an error if the pod was bound meanwhile.
func refusedOverBudget(ctx context.Context, pod *corev1.Pod, resource string) (bool, error) {
	p, err := local.Client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil {
		return false, nil
	}
	if p.Spec.NodeName != "" {
		return false, fmt.Errorf("pod %s over budget was bound to %s", pod.Name, p.Spec.NodeName)
	}
	for _, ev := range events(ctx, pod, tenancyv1.ReasonOverBudget) {
		if strings.Contains(ev.Message, resource) {
			return true, nil
		}
	}
	return false, nil
}
