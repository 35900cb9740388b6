package localcluster

import (
	"context"
	"strings"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	schedulingv1 "k8s.io/api/scheduling/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/internal/testing/builder"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

// reclaimBound is how long an owner below its guarantee may wait for a
// borrowed GPU: a reclaim pass (the controller's ReclaimInterval), the victim's
// graceful termination (5 s in these pods), the scheduler's next try and
// the binding-condition poll (5 s), with room for a loaded machine.
const reclaimBound = time.Minute

// wholeMemory is the memory the tenancy node publishes for gpu-0.
func wholeMemory(t *testing.T) int64 {
	t.Helper()
	list, err := local.Client.ResourceV1().ResourceSlices().List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m, ok := tenancy.DeviceMemory(ptrsOf(list.Items))[tenancy.DeviceID{Driver: gpuapi.DriverName, Pool: tenancyNode.Name, Device: gpuapi.WholeDeviceName(0)}]
	if !ok {
		t.Fatal("the tenancy node publishes no gpu-0")
	}
	return m
}

func priorityClass(t *testing.T, prefix string, value int32) string {
	t.Helper()
	pc := &schedulingv1.PriorityClass{ObjectMeta: metav1.ObjectMeta{Name: prefix + "-" + rand.String(5)}, Value: value}
	if _, err := local.Client.SchedulingV1().PriorityClasses().Create(t.Context(), pc, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create PriorityClass: %v", err)
	}
	t.Cleanup(func() {
		_ = local.Client.SchedulingV1().PriorityClasses().Delete(context.Background(), pc.Name, metav1.DeleteOptions{})
	})
	return pc.Name
}

// onTenancyNode pins a pod to the tenancy node (two H200s), with the given
// PriorityClass ("" for none).
func onTenancyNode(priorityClass string) podOption {
	return func(p *corev1.Pod) {
		onTenancyNodes(p)
		p.Spec.NodeSelector["kubernetes.io/hostname"] = tenancyNode.Name
		p.Spec.PriorityClassName = priorityClass
	}
}

// TestTenancyReclaim: owner is guaranteed one GPU; borrower has no
// guarantee. borrower's Job (low priority) fills the tenancy node's two
// GPUs beside a high-priority pod, with more pods than GPUs so that evicted
// ones come back and wait. owner's pod arrives: reclaim evicts a Job pod
// (the lowest priority, although the high-priority pod started later),
// never the high-priority pod, and owner's pod runs within reclaimBound,
// with Events on both sides. owner's second pod, at its guarantee, gets
// nothing reclaimed and says why.
func TestTenancyReclaim(t *testing.T) {
	m := wholeMemory(t)
	one := resource.NewQuantity(m, resource.BinarySI)
	two := resource.NewQuantity(2*m, resource.BinarySI)
	owner := newTenant(t, "owner", tenancyv1.GPUTenantSpec{
		AllowedDeviceClasses: []string{gpuapi.ClassGPU},
		Budget:               &tenancyv1.Budget{GPUMemory: two},
		Guarantee:            &tenancyv1.Budget{GPUMemory: one, Devices: map[string]int64{gpuapi.ClassGPU: 1}},
	})
	borrower := newTenant(t, "borrower", tenancyv1.GPUTenantSpec{
		AllowedDeviceClasses: []string{gpuapi.ClassGPU},
		Budget:               &tenancyv1.Budget{GPUMemory: two},
	})
	ownerNS, borrowerNS := tenantNamespace(t, owner.Name), tenantNamespace(t, borrower.Name)
	low, high := priorityClass(t, "reclaim-low", 0), priorityClass(t, "reclaim-high", 1000)
	for _, ns := range []string{ownerNS, borrowerNS} {
		createTemplate(t, ns, "gpu", builder.MakeRequest("gpu", gpuapi.ClassGPU).Obj())
	}
	ctx := testContext(t)

	// The Job's first pod starts before the high-priority pod, so that
	// recency alone would pick the high-priority pod.
	job := reclaimJob(borrowerNS, low)
	created, err := local.Client.BatchV1().Jobs(borrowerNS).Create(ctx, job, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create Job: %v", err)
	}
	jobPods := waitJobPods(t, borrowerNS, created.Name, 1)
	vip := waitRunning(t, createPod(t, borrowerNS, "vip", "gpu", onTenancyNode(high)))
	scale := []byte(`{"spec":{"parallelism":3}}`)
	if _, err := local.Client.BatchV1().Jobs(borrowerNS).Patch(ctx, created.Name, "application/merge-patch+json", scale, metav1.PatchOptions{}); err != nil {
		t.Fatalf("scale Job: %v", err)
	}
	waitTenant(t, borrower.Name, "borrowing two GPUs", func(g *tenancyv1.GPUTenant) bool {
		return g.Status.Borrowed.GPUMemory.Cmp(*two) == 0
	})

	start := time.Now()
	// owner's pods outrank the Job's, so that the scheduler's queue tries
	// them first once a GPU is free (the Job's evicted pods come back and
	// wait too).
	first := createPod(t, ownerNS, "first", "gpu", onTenancyNode(high))
	first = waitRunningWithin(t, first, reclaimBound)
	t.Logf("owner's pod ran %s after it was created", time.Since(start).Round(time.Second))
	if len(events(ctx, first, tenancyv1.ReasonReclaiming)) == 0 {
		t.Errorf("owner's pod has no %s event:\n%s", tenancyv1.ReasonReclaiming, eventSummary(first))
	}
	evicted := events(ctx, jobPods[0], tenancyv1.ReasonReclaimed)
	if len(evicted) == 0 {
		t.Errorf("the Job's pod %s has no %s event:\n%s", jobPods[0].Name, tenancyv1.ReasonReclaimed, eventSummary(jobPods[0]))
	} else if want := "reclaimed by GPUTenant " + owner.Name + " for pod " + ownerNS + "/first"; !strings.Contains(evicted[0].Message, want) {
		t.Errorf("eviction event %q does not say %q", evicted[0].Message, want)
	}
	if got, err := local.Client.CoreV1().Pods(borrowerNS).Get(ctx, vip.Name, metav1.GetOptions{}); err != nil || got.UID != vip.UID || got.DeletionTimestamp != nil {
		t.Errorf("the high-priority pod was evicted (err %v)", err)
	}

	// owner holds its guarantee now: its second pod waits, told so, and
	// nothing of borrower's is evicted for it.
	second := createPod(t, ownerNS, "second", "gpu", onTenancyNode(high))
	waitEvent(t, second, tenancyv1.ReasonGuaranteeHeld)
	if n := len(events(ctx, second, tenancyv1.ReasonReclaiming)); n != 0 {
		t.Errorf("reclaimed for a pod of a tenant at its guarantee:\n%s", eventSummary(second))
	}
	if got, err := local.Client.CoreV1().Pods(borrowerNS).Get(ctx, vip.Name, metav1.GetOptions{}); err != nil || got.DeletionTimestamp != nil {
		t.Errorf("the high-priority pod was evicted for a tenant at its guarantee (err %v)", err)
	}
	running := 0
	list, err := local.Client.CoreV1().Pods(borrowerNS).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range list.Items {
		if p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil {
			running++
		}
	}
	if running != 1 {
		t.Errorf("borrower runs %d pods after reclaim, want 1 (the high-priority one)", running)
	}
}

// reclaimJob runs pause pods of the "gpu" template on the tenancy node, one
// at a time until scaled: its pods never complete.
func reclaimJob(ns, priorityClass string) *batchv1.Job {
	pod := corev1.PodTemplateSpec{Spec: corev1.PodSpec{
		RestartPolicy:  corev1.RestartPolicyNever,
		ResourceClaims: []corev1.PodResourceClaim{{Name: "gpu", ResourceClaimTemplateName: ptr.To("gpu")}},
		Containers: []corev1.Container{{
			Name: "ctr", Image: "registry.k8s.io/pause:3.10",
			Resources: corev1.ResourceRequirements{Claims: []corev1.ResourceClaim{{Name: "gpu"}}},
		}},
		TerminationGracePeriodSeconds: ptr.To(int64(5)),
	}}
	p := &corev1.Pod{Spec: pod.Spec}
	onTenancyNode(priorityClass)(p)
	pod.Spec = p.Spec
	return &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Name: "borrow", Namespace: ns},
		Spec: batchv1.JobSpec{
			Parallelism: ptr.To(int32(1)), Completions: ptr.To(int32(10)),
			// Evicted pods are failures to the Job; they must not end it.
			BackoffLimit: ptr.To(int32(100)),
			Template:     pod,
		},
	}
}

// waitJobPods waits until n of the Job's pods run and returns them.
func waitJobPods(t *testing.T, ns, job string, n int) []*corev1.Pod {
	t.Helper()
	var out []*corev1.Pod
	err := wait.PollUntilContextTimeout(t.Context(), pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		list, err := local.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "job-name=" + job})
		if err != nil {
			return false, nil
		}
		out = out[:0]
		for i := range list.Items {
			if list.Items[i].Status.Phase == corev1.PodRunning {
				out = append(out, &list.Items[i])
			}
		}
		return len(out) >= n, nil
	})
	if err != nil {
		t.Fatalf("Job %s/%s: %d pods running, want %d: %v", ns, job, len(out), n, err)
	}
	return out
}

// waitRunningWithin waits until the pod runs, at most within.
func waitRunningWithin(t *testing.T, pod *corev1.Pod, within time.Duration) *corev1.Pod {
	t.Helper()
	var got *corev1.Pod
	err := wait.PollUntilContextTimeout(t.Context(), pollEvery, within, true, func(ctx context.Context) (bool, error) {
		p, err := local.Client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		got = p
		return p.Status.Phase == corev1.PodRunning, nil
	})
	if err != nil {
		t.Fatalf("pod %s not running within %s: %v\n%s", pod.Name, within, err, eventSummary(pod))
	}
	return got
}
