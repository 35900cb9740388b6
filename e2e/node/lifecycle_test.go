package node

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/internal/nvml/nvmlmock"
)

// reasonFailedPrepare is the event reason the kubelet gives a pod whose claims
// it could not prepare (k8s.io/kubernetes/pkg/kubelet/events).
const reasonFailedPrepare = "FailedPrepareDynamicResources"

// TestPrepareFailureShowsInPodEvents gives a claim opaque config the plugin
// must refuse: the real kubelet reports the plugin's message in a Warning event
// on the pod, and the container is never created.
func TestPrepareFailureShowsInPodEvents(t *testing.T) {
	ns := newNamespace(t)
	claim := createClaim(t, ns, "bad-config", request(gpuapi.ClassGPU), resourceapi.DeviceClaimConfiguration{
		Requests: []string{"gpu"},
		DeviceConfiguration: resourceapi.DeviceConfiguration{Opaque: &resourceapi.OpaqueDeviceConfiguration{
			Driver:     gpuapi.DriverName,
			Parameters: runtime.RawExtension{Raw: []byte(`{"apiVersion":"config.gpu.tessera.dev/v1alpha1","kind":"GPUConfig","noSuchField":true}`)},
		}},
	})
	pod := createPod(t, ns, "misconfigured", claim.Name)
	ev := waitEvent(t, pod, reasonFailedPrepare)
	if ev.Type != corev1.EventTypeWarning || !strings.Contains(ev.Message, "noSuchField") {
		t.Errorf("event %s %q, want a Warning naming the bad field noSuchField", ev.Type, ev.Message)
	}
	if ev.Source.Component != "kubelet" {
		t.Errorf("event from %q, want the kubelet", ev.Source.Component)
	}
	p, err := local.Client.CoreV1().Pods(ns).Get(t.Context(), pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p.Status.Phase != corev1.PodPending {
		t.Errorf("pod with refused config is %s, want Pending", p.Status.Phase)
	}
	for _, c := range p.Status.ContainerStatuses {
		if c.State.Running != nil || c.ContainerID != "" {
			t.Errorf("container %s was created (%s) although its claim was not prepared", c.Name, c.ContainerID)
		}
	}
	if _, ok := claimSpecPath(claim); ok {
		t.Errorf("refused claim has a CDI spec")
	}
}

// TestRestartsLoseNothing prepares a GPU for a running pod, then deletes the
// plugin's pod at once (as a crash; the DaemonSet brings a new one), then
// kills and restarts the kubelet: the container keeps running without a
// restart and still has its device, its claim keeps its CDI spec, a new pod
// gets another device, and deleting the first pod after both restarts still
// unprepares its claim.
func TestRestartsLoseNothing(t *testing.T) {
	ns := newNamespace(t)
	claim := createClaim(t, ns, "first", request(gpuapi.ClassMIG, profileIs("1g.18gb")))
	pod := waitRunning(t, createPod(t, ns, "first", claim.Name))
	want := specEdits(t, claimSpec(t, claim))
	nodes := func() []string {
		var out []string
		for p := range want.nodes {
			out = append(out, p)
		}
		return out
	}()
	before := probe(t, pod, nodes, nil)
	for path, n := range want.nodes {
		if w := n.seenAs("0"); before.nodes[path] != w {
			t.Fatalf("%s in the container before the restarts: %q, want %q", path, before.nodes[path], w)
		}
	}
	gpuBefore := mockGPU(t)
	if len(gpuBefore.Instances) != 1 {
		t.Fatalf("the GPU holds MIG instances %+v, want the first claim's alone", gpuBefore.Instances)
	}

	if err := node.RestartPlugin(t.Context(), true); err != nil {
		t.Fatalf("restart plugin: %v", err)
	}
	if err := node.RestartKubelet(t.Context(), true); err != nil {
		t.Fatalf("restart kubelet: %v", err)
	}
	p, err := local.Client.CoreV1().Pods(ns).Get(t.Context(), pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p.Status.Phase != corev1.PodRunning || len(p.Status.ContainerStatuses) != 1 || p.Status.ContainerStatuses[0].RestartCount != 0 || p.Status.ContainerStatuses[0].State.Running == nil {
		t.Errorf("after the restarts the pod is %s, want it still running, never restarted", statusSummary(p))
	}
	if _, ok := claimSpecPath(claim); !ok {
		t.Errorf("claim %s lost its CDI spec in the restarts", claim.Name)
	}
	after := probe(t, pod, nodes, nil)
	for _, path := range nodes {
		if after.nodes[path] != before.nodes[path] {
			t.Errorf("%s in the container changed in the restarts: %q, then %q", path, before.nodes[path], after.nodes[path])
		}
	}
	// The restarted plugin found the instance in the GPU and its claim in
	// the checkpoint: it neither destroyed nor replaced it.
	if diff := cmp.Diff(gpuBefore, mockGPU(t)); diff != "" {
		t.Errorf("the GPU's MIG instances changed in the restarts (-before +after):\n%s", diff)
	}

	second := createClaim(t, ns, "second", request(gpuapi.ClassMIG, profileIs("1g.18gb")))
	pod2 := waitRunning(t, createPod(t, ns, "second", second.Name))
	// Another GPU instance has other capability nodes (the mock's MIG UUIDs
	// may repeat, its instance IDs do not).
	caps := func(e edits) (out []string) {
		for p := range e.nodes {
			if strings.HasPrefix(p, "/dev/nvidia-caps/") {
				out = append(out, p)
			}
		}
		slices.Sort(out)
		return out
	}
	want2 := specEdits(t, claimSpec(t, second))
	if first, other := caps(want), caps(want2); len(other) != 2 || slices.Equal(first, other) {
		t.Errorf("second MIG claim has capability nodes %v, want two other than the first claim's %v", other, first)
	}
	if got := probe(t, pod2, caps(want2), nil); len(got.nodes) != 2 {
		t.Errorf("second pod sees capability nodes %v, want its claim's %v", got.nodes, caps(want2))
	}

	deletePod(t, pod)
	waitUnprepared(t, claim)
	waitUnreserved(t, claim)
	if _, ok := claimSpecPath(second); !ok {
		t.Errorf("unpreparing the first claim removed the second claim's CDI spec")
	}
}

// mockGPU is what the node's simulated GPU 0 holds, read from the state the
// plugin's mock NVML keeps in its state directory, as a GPU keeps it across
// plugin restarts.
func mockGPU(t *testing.T) nvmlmock.GPUState {
	t.Helper()
	gpus, err := nvmlmock.ReadState(filepath.Join(node.StateDir, nvmlmock.StateFileName))
	if err != nil {
		t.Fatal(err)
	}
	if len(gpus) != 1 {
		t.Fatalf("the node's mock NVML has %d GPUs, want 1", len(gpus))
	}
	return gpus[0]
}
