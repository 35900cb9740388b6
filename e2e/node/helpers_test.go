package node

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/remotecommand"
	"tags.cncf.io/container-device-interface/pkg/cdi"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/e2e/framework/clustertest"
	"github.com/tessera-gpu/tessera/e2e/framework/realnode"
)

const (
	// waitTimeout bounds every wait. A pod on this node needs its sandbox
	// (pause), the claim prepared and one container started: seconds.
	waitTimeout = 2 * time.Minute
	pollEvery   = 200 * time.Millisecond
)

// newNamespace creates a namespace for one test; cleanup deletes its pods and
// waits until the kubelet has removed them (and so unprepared their claims),
// so that the next test finds the GPU free.
func newNamespace(t *testing.T) string {
	t.Helper()
	needNode(t)
	return clustertest.Namespace(t, local.Client, "node-", waitTimeout)
}

// request builds an ExactDeviceRequest.
func request(class string, selectors ...string) resourceapi.DeviceRequest {
	r := resourceapi.DeviceRequest{Name: "gpu", Exactly: &resourceapi.ExactDeviceRequest{DeviceClassName: class}}
	for _, s := range selectors {
		r.Exactly.Selectors = append(r.Exactly.Selectors, resourceapi.DeviceSelector{CEL: &resourceapi.CELDeviceSelector{Expression: s}})
	}
	return r
}

func profileIs(profile string) string {
	return fmt.Sprintf(`device.attributes[%q].%s == %q`, gpuapi.DriverName, gpuapi.AttrProfile, profile)
}

// withMemory asks for a share of memory bytes of a shared GPU.
func withMemory(r resourceapi.DeviceRequest, quantity string) resourceapi.DeviceRequest {
	r.Exactly.Capacity = &resourceapi.CapacityRequirements{Requests: map[resourceapi.QualifiedName]resource.Quantity{
		gpuapi.CapMemory: resource.MustParse(quantity),
	}}
	return r
}

// createClaim creates a ResourceClaim (not a template, so that its UID, which
// names its CDI spec, is known before the pod runs).
func createClaim(t *testing.T, ns, name string, r resourceapi.DeviceRequest, config ...resourceapi.DeviceClaimConfiguration) *resourceapi.ResourceClaim {
	t.Helper()
	claim := &resourceapi.ResourceClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec:       resourceapi.ResourceClaimSpec{Devices: resourceapi.DeviceClaim{Requests: []resourceapi.DeviceRequest{r}, Config: config}},
	}
	created, err := local.Client.ResourceV1().ResourceClaims(ns).Create(t.Context(), claim, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create ResourceClaim %s: %v", name, err)
	}
	return created
}

type podOption func(*corev1.Pod)

// asUser runs the pod's container as uid:gid, not root.
func asUser(uid, gid int64) podOption {
	return func(p *corev1.Pod) {
		p.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsUser: &uid, RunAsGroup: &gid, RunAsNonRoot: new(true)}
	}
}

// createPod creates a pod on the real node whose one container, from the
// locally imported test image, uses claim and idles until it is told to stop.
func createPod(t *testing.T, ns, name, claim string, opts ...podOption) *corev1.Pod {
	t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PodSpec{
			// Selected, not named: a pod with spec.nodeName set would skip the
			// scheduler, and with it the claim's allocation.
			NodeSelector:                 map[string]string{"kubernetes.io/hostname": nodeName},
			ResourceClaims:               []corev1.PodResourceClaim{{Name: "gpu", ResourceClaimName: &claim}},
			AutomountServiceAccountToken: new(false),
			EnableServiceLinks:           new(false),
			RestartPolicy:                corev1.RestartPolicyNever,
			Containers: []corev1.Container{{
				Name:            "ctr",
				Image:           realnode.TestImage,
				ImagePullPolicy: corev1.PullNever,
				// PID 1 ignores SIGTERM unless it traps it.
				Command:   []string{"/bin/sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"},
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

// waitRunning waits until the pod's container runs, failing with the pod's
// events (the kubelet's and the runtime's reasons) if it does not.
func waitRunning(t *testing.T, pod *corev1.Pod) *corev1.Pod {
	t.Helper()
	var got *corev1.Pod
	err := wait.PollUntilContextTimeout(t.Context(), pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		p, err := local.Client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		got = p
		if p.Status.Phase == corev1.PodFailed || p.Status.Phase == corev1.PodSucceeded {
			return false, fmt.Errorf("pod ended: %s", p.Status.Phase)
		}
		return p.Status.Phase == corev1.PodRunning && len(p.Status.ContainerStatuses) == 1 && p.Status.ContainerStatuses[0].State.Running != nil, nil
	})
	if err != nil {
		t.Fatalf("pod %s/%s not running: %v\nstatus: %s\nevents:\n%s", pod.Namespace, pod.Name, err, statusSummary(got), eventSummary(pod))
	}
	return got
}

func statusSummary(p *corev1.Pod) string {
	if p == nil {
		return "(none)"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "phase %s", p.Status.Phase)
	for _, c := range p.Status.ContainerStatuses {
		if w := c.State.Waiting; w != nil {
			fmt.Fprintf(&b, "; %s waiting: %s %s", c.Name, w.Reason, w.Message)
		}
		if x := c.State.Terminated; x != nil {
			fmt.Fprintf(&b, "; %s terminated: %s %s (exit %d)", c.Name, x.Reason, x.Message, x.ExitCode)
		}
	}
	return b.String()
}

func eventSummary(pod *corev1.Pod) string { return clustertest.EventSummary(local.Client, pod) }

// waitEvent waits for an event of the pod with the given reason.
func waitEvent(t *testing.T, pod *corev1.Pod, reason string) corev1.Event {
	t.Helper()
	return clustertest.WaitPodEvent(t, local.Client, pod, reason, waitTimeout)
}

// deletePod deletes the pod and waits until the kubelet has removed it.
func deletePod(t *testing.T, pod *corev1.Pod) {
	t.Helper()
	pods := local.Client.CoreV1().Pods(pod.Namespace)
	if err := pods.Delete(t.Context(), pod.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("delete pod %s: %v", pod.Name, err)
	}
	err := wait.PollUntilContextTimeout(t.Context(), pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		_, err := pods.Get(ctx, pod.Name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	if err != nil {
		t.Fatalf("pod %s not removed by the kubelet: %v", pod.Name, err)
	}
}

// execIn runs a shell command in the pod's container through the API server,
// the kubelet and containerd's streaming server, as kubectl exec does.
func execIn(t *testing.T, pod *corev1.Pod, script string) string {
	t.Helper()
	out, err := execTry(t.Context(), pod, script)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// execTry is execIn returning the command's failure (with its output).
func execTry(ctx context.Context, pod *corev1.Pod, script string) (string, error) {
	req := local.Client.CoreV1().RESTClient().Post().Resource("pods").Namespace(pod.Namespace).Name(pod.Name).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{Container: "ctr", Command: []string{"/bin/sh", "-c", script}, Stdout: true, Stderr: true}, scheme.ParameterCodec)
	exec, err := remotecommand.NewSPDYExecutor(local.Config, "POST", req.URL())
	if err != nil {
		return "", fmt.Errorf("exec in %s: %w", pod.Name, err)
	}
	var stdout, stderr bytes.Buffer
	if err := exec.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: &stdout, Stderr: &stderr}); err != nil {
		return stdout.String(), fmt.Errorf("exec %q in %s: %w\nstdout: %s\nstderr: %s", script, pod.Name, err, stdout.String(), stderr.String())
	}
	return stdout.String(), nil
}

// claimSpec reads the CDI spec the plugin wrote for the claim, which is what
// containerd applied to the container.
func claimSpec(t *testing.T, claim *resourceapi.ResourceClaim) *cdi.Spec {
	t.Helper()
	path, ok := claimSpecPath(claim)
	if !ok {
		t.Fatalf("no CDI spec of claim %s (UID %s) in %s", claim.Name, claim.UID, node.CDIRoot)
	}
	spec, err := cdi.ReadSpec(path, 0)
	if err != nil {
		t.Fatalf("read CDI spec %s: %v", path, err)
	}
	return spec
}

// claimSpecPath finds the claim's CDI spec file by the claim UID in its name.
func claimSpecPath(claim *resourceapi.ResourceClaim) (string, bool) {
	entries, err := os.ReadDir(node.CDIRoot)
	if err != nil {
		return "", false
	}
	for _, e := range entries {
		if strings.Contains(e.Name(), string(claim.UID)) {
			return filepath.Join(node.CDIRoot, e.Name()), true
		}
	}
	return "", false
}

// waitUnprepared waits until the claim's CDI spec is gone, which the plugin
// does last when it unprepares the claim.
func waitUnprepared(t *testing.T, claim *resourceapi.ResourceClaim) {
	t.Helper()
	err := wait.PollUntilContextTimeout(t.Context(), pollEvery, waitTimeout, true, func(context.Context) (bool, error) {
		_, ok := claimSpecPath(claim)
		return !ok, nil
	})
	if err != nil {
		t.Fatalf("claim %s still has its CDI spec after its pod is gone: %v (plugin log: %s)", claim.Name, err, node.PluginLog())
	}
}
