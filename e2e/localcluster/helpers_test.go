package localcluster

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/wait"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/demo"
	"github.com/tessera-gpu/tessera/e2e/framework/cluster"
	"github.com/tessera-gpu/tessera/e2e/framework/clustertest"
	"github.com/tessera-gpu/tessera/e2e/framework/kubelet"
	"github.com/tessera-gpu/tessera/internal/testing/builder"
)

const (
	// testNamespacePrefix starts the name of every namespace a test makes.
	testNamespacePrefix = "e2e-"
	// waitTimeout bounds every wait on the cluster. The scheduler retries an
	// unschedulable pod within seconds of a relevant change, so a minute is ample.
	waitTimeout = time.Minute
	pollEvery   = 100 * time.Millisecond
)

// testContext bounds one test's calls to the cluster.
func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// newNamespace creates a namespace for one test, the test's first only once
// the cluster holds nothing of the tests before (startClean). Cleanup deletes its
// pods and claims and waits until they are gone.
func newNamespace(t *testing.T) string {
	t.Helper()
	needCluster(t)
	startClean(t)
	return clustertest.Namespace(t, local.Client, testNamespacePrefix, waitTimeout)
}

func createTemplate(t *testing.T, ns, name string, requests ...resourceapi.DeviceRequest) {
	t.Helper()
	tmpl := builder.MakeClaim(name).Namespace(ns).Request(requests...).Template()
	if _, err := local.Client.ResourceV1().ResourceClaimTemplates(ns).Create(t.Context(), tmpl, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create ResourceClaimTemplate %s: %v", name, err)
	}
}

type podOption func(*corev1.Pod)

// onNode pins the pod to node (tolerating the small node's taint).
func onNode(node string) podOption {
	return func(p *corev1.Pod) {
		p.Spec.NodeSelector = map[string]string{"kubernetes.io/hostname": node}
		p.Spec.Tolerations = append(p.Spec.Tolerations, corev1.Toleration{Key: smallTaintKey, Operator: corev1.TolerationOpExists})
	}
}

// createPod creates a pod whose one container uses the claim made from template.
func createPod(t *testing.T, ns, name, template string, opts ...podOption) *corev1.Pod {
	t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PodSpec{
			ResourceClaims: []corev1.PodResourceClaim{{Name: "gpu", ResourceClaimTemplateName: &template}},
			Containers: []corev1.Container{{
				Name: "ctr", Image: "registry.k8s.io/pause:3.10",
				Resources: corev1.ResourceRequirements{Claims: []corev1.ResourceClaim{{Name: "gpu"}}},
			}},
			TerminationGracePeriodSeconds: new(int64(5)),
		},
	}
	for _, o := range opts {
		o(pod)
	}
	created, err := local.Client.CoreV1().Pods(ns).Create(t.Context(), pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod %s: %v", name, err)
	}
	return created
}

// allocation is where the scheduler put a pod and its claim.
type allocation struct {
	Pod   *corev1.Pod
	Claim *resourceapi.ResourceClaim
}

// Devices returns the allocated device results.
func (a allocation) Devices() []resourceapi.DeviceRequestAllocationResult {
	return a.Claim.Status.Allocation.Devices.Results
}

// waitAllocated waits until the scheduler has bound pod and allocated its claim.
func waitAllocated(t *testing.T, pod *corev1.Pod) allocation {
	t.Helper()
	var a allocation
	err := wait.PollUntilContextTimeout(t.Context(), pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		p, err := local.Client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil || p.Spec.NodeName == "" || len(p.Status.ResourceClaimStatuses) == 0 || p.Status.ResourceClaimStatuses[0].ResourceClaimName == nil {
			return false, nil
		}
		c, err := local.Client.ResourceV1().ResourceClaims(pod.Namespace).Get(ctx, *p.Status.ResourceClaimStatuses[0].ResourceClaimName, metav1.GetOptions{})
		if err != nil || c.Status.Allocation == nil {
			return false, nil
		}
		a = allocation{Pod: p, Claim: c}
		return true, nil
	})
	if err != nil {
		t.Fatalf("pod %s/%s not scheduled with an allocated claim within %s: %v; events: %s", pod.Namespace, pod.Name, waitTimeout, err, eventSummary(pod))
	}
	return a
}

// waitRunning waits until the kubelet stand-in has prepared pod's claims and
// started it, and returns the pod. A prepare failure fails the test with the
// plugin's last message.
func waitRunning(t *testing.T, pod *corev1.Pod) *corev1.Pod {
	t.Helper()
	var running *corev1.Pod
	var lastWarning string
	err := wait.PollUntilContextTimeout(t.Context(), pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		p, err := local.Client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		for _, e := range events(ctx, p, kubelet.ReasonFailedPrepare) {
			lastWarning = e.Message
		}
		if p.Status.Phase == corev1.PodRunning {
			running = p
			return true, nil
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("pod %s/%s not running within %s: %v; last prepare warning: %q", pod.Namespace, pod.Name, waitTimeout, err, lastWarning)
	}
	return running
}

// waitEvent waits for an event with reason about pod and returns it.
func waitEvent(t *testing.T, pod *corev1.Pod, reason string) corev1.Event {
	t.Helper()
	return clustertest.WaitPodEvent(t, local.Client, pod, reason, waitTimeout)
}

func events(ctx context.Context, pod *corev1.Pod, reason string) []corev1.Event {
	return clustertest.PodEvents(ctx, local.Client, pod, reason)
}

func eventSummary(pod *corev1.Pod) string { return clustertest.EventSummary(local.Client, pod) }

func deletePod(t *testing.T, pod *corev1.Pod) {
	t.Helper()
	if err := local.Client.CoreV1().Pods(pod.Namespace).Delete(t.Context(), pod.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Fatalf("delete pod %s: %v", pod.Name, err)
	}
}

// waitGone waits until pod is deleted for good (the stand-in finished it) and its
// generated claim is gone.
func waitGone(t *testing.T, a allocation) {
	t.Helper()
	err := wait.PollUntilContextTimeout(t.Context(), pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		_, err := local.Client.CoreV1().Pods(a.Pod.Namespace).Get(ctx, a.Pod.Name, metav1.GetOptions{})
		if !apierrors.IsNotFound(err) {
			return false, nil
		}
		_, err = local.Client.ResourceV1().ResourceClaims(a.Claim.Namespace).Get(ctx, a.Claim.Name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	if err != nil {
		t.Fatalf("pod %s/%s or its claim %s still there after %s: %v", a.Pod.Namespace, a.Pod.Name, a.Claim.Name, waitTimeout, err)
	}
}

// deviceAttributes returns the attributes the plugin published for a device.
func deviceAttributes(t *testing.T, pool, device string) map[resourceapi.QualifiedName]resourceapi.DeviceAttribute {
	t.Helper()
	list, err := local.Client.ResourceV1().ResourceSlices().List(t.Context(), metav1.ListOptions{
		FieldSelector: fields.Set{"spec.driver": gpuapi.DriverName}.String(),
	})
	if err != nil {
		t.Fatalf("list ResourceSlices: %v", err)
	}
	for _, s := range list.Items {
		if s.Spec.Pool.Name != pool {
			continue
		}
		for _, d := range s.Spec.Devices {
			if d.Name == device {
				return d.Attributes
			}
		}
	}
	t.Fatalf("device %s/%s not published", pool, device)
	return nil
}

func stringAttr(attrs map[resourceapi.QualifiedName]resourceapi.DeviceAttribute, name string) string {
	a, ok := demo.Attribute(attrs, name)
	if !ok || a.StringValue == nil {
		return ""
	}
	return *a.StringValue
}

func intAttr(attrs map[resourceapi.QualifiedName]resourceapi.DeviceAttribute, name string) (int64, bool) {
	a, ok := demo.Attribute(attrs, name)
	if !ok || a.IntValue == nil {
		return 0, false
	}
	return *a.IntValue, true
}

// containerEdits decodes what the stand-in recorded for pod's container.
func containerEdits(t *testing.T, pod *corev1.Pod, container string) kubelet.ContainerEdits {
	t.Helper()
	raw := pod.Annotations[kubelet.EditsAnnotation]
	var all map[string]kubelet.ContainerEdits
	if err := json.Unmarshal([]byte(raw), &all); err != nil {
		t.Fatalf("decode %s of pod %s: %v (%q)", kubelet.EditsAnnotation, pod.Name, err, raw)
	}
	e, ok := all[container]
	if !ok {
		t.Fatalf("no container edits for %s in %s", container, raw)
	}
	return e
}

func node(t *testing.T, name string) *cluster.Node {
	t.Helper()
	n := local.Node(name)
	if n == nil {
		t.Fatalf("no node %s", name)
	}
	return n
}
