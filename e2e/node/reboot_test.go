package node

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/internal/nvml/nvmlmock"
)

// TestRebootBringsMIGPodBack simulates a reboot of the node with a MIG pod
// running: every container is killed, the GPU loses its MIG instances and
// (an H200 being Hopper) its MIG mode, the CDI directory is emptied, and the
// kubelet starts again. The pod (restartPolicy Always) runs again with the
// same claim and allocation, the GPU holds a new instance at the recorded
// profile and placement, and the new container has the capability nodes of
// the claim's rewritten spec.
func TestRebootBringsMIGPodBack(t *testing.T) {
	ns := newNamespace(t)
	claim := createClaim(t, ns, "mig", request(gpuapi.ClassMIG, profileIs("1g.18gb")))
	pod := waitRunning(t, createPod(t, ns, "mig", claim.Name, restartAlways))
	allocated := allocationOf(t, ns, claim.Name)
	gpuBefore := mockGPUs(t)
	if n := instances(gpuBefore); n != 1 {
		t.Fatalf("the GPUs hold %d MIG instances (%+v), want the claim's alone", n, gpuBefore)
	}

	gpus := 1
	if n, err := strconv.Atoi(os.Getenv("TESSERA_NODE_GPUS")); err == nil {
		gpus = n
	}
	err := node.Reboot(t.Context(), func() error {
		if err := emptyDir(node.CDIRoot); err != nil {
			return err
		}
		// The mock NVML lives in the plugin's process, now killed; what
		// it keeps across processes is its state file, which a mock of
		// the same model loads, reboots and saves again.
		mock, err := nvmlmock.New("dgxh200", gpus, nodeName)
		if err != nil {
			return err
		}
		if err := mock.Persist(filepath.Join(node.StateDir, nvmlmock.StateFileName)); err != nil {
			return err
		}
		mock.Reboot()
		if n := instances(mockGPUs(t)); n != 0 {
			return fmt.Errorf("the rebooted mock still holds %d MIG instances", n)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("reboot: %v", err)
	}
	p := waitRestarted(t, pod)
	if got := allocationOf(t, ns, claim.Name); !slices.Equal(got, allocated) {
		t.Errorf("claim %s is allocated %v after the reboot, want %v as before", claim.Name, got, allocated)
	}
	if diff := cmp.Diff(gpuBefore, mockGPUs(t)); diff != "" {
		t.Errorf("the GPU after the reboot does not hold the claim's instance as before (-before +after):\n%s", diff)
	}
	want := specEdits(t, claimSpec(t, claim))
	var caps []string
	for path := range want.nodes {
		if strings.HasPrefix(path, "/dev/nvidia-caps/") {
			caps = append(caps, path)
		}
	}
	if len(caps) != 2 {
		t.Fatalf("rewritten spec has capability nodes %v, want the GPU instance's and the compute instance's", caps)
	}
	got := probe(t, p, caps, nil)
	for _, path := range caps {
		if w := want.nodes[path].seenAs("0"); got.nodes[path] != w {
			t.Errorf("%s in the restarted container: %q, want the rewritten spec's %q", path, got.nodes[path], w)
		}
	}
	if v := got.env["NVIDIA_VISIBLE_DEVICES"]; v != want.env["NVIDIA_VISIBLE_DEVICES"] || !strings.HasPrefix(v, "MIG-") {
		t.Errorf("NVIDIA_VISIBLE_DEVICES=%q in the restarted container, want the spec's MIG device %q", v, want.env["NVIDIA_VISIBLE_DEVICES"])
	}
	// A rebooted kubelet syncs the pod before the plugin's pod is back and
	// registered, and retries; the plugin itself must refuse nothing.
	checkNoFailedPrepare(t, ns, "DRA driver "+gpuapi.DriverName+" is not registered")
}

// restartAlways lets the kubelet start the pod's container again after a
// reboot killed it.
func restartAlways(p *corev1.Pod) { p.Spec.RestartPolicy = corev1.RestartPolicyAlways }

// allocationOf is the claim's allocated devices.
func allocationOf(t *testing.T, ns, name string) []string {
	t.Helper()
	c, err := local.Client.ResourceV1().ResourceClaims(ns).Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if c.Status.Allocation == nil {
		return nil
	}
	var out []string
	for _, r := range c.Status.Allocation.Devices.Results {
		out = append(out, fmt.Sprintf("%s/%s/%s", r.Driver, r.Pool, r.Device))
	}
	slices.Sort(out)
	return out
}

// waitRestarted waits until the pod runs a container other than the one it
// ran before.
func waitRestarted(t *testing.T, pod *corev1.Pod) *corev1.Pod {
	t.Helper()
	before := pod.Status.ContainerStatuses[0].ContainerID
	var got *corev1.Pod
	err := wait.PollUntilContextTimeout(t.Context(), pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		p, err := local.Client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		got = p
		if p.Status.Phase != corev1.PodRunning || len(p.Status.ContainerStatuses) != 1 {
			return false, nil
		}
		c := p.Status.ContainerStatuses[0]
		return c.State.Running != nil && c.ContainerID != "" && c.ContainerID != before, nil
	})
	if err != nil {
		t.Fatalf("pod %s/%s not running again after the reboot: %v\nstatus: %s\nevents:\n%s", pod.Namespace, pod.Name, err, statusSummary(got), eventSummary(pod))
	}
	return got
}

// emptyDir removes everything in dir, as a reboot empties /var/run.
func emptyDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// mockGPUs is what the node's simulated GPUs hold (see mockGPU).
func mockGPUs(t *testing.T) []nvmlmock.GPUState {
	t.Helper()
	gpus, err := nvmlmock.ReadState(filepath.Join(node.StateDir, nvmlmock.StateFileName))
	if err != nil {
		t.Fatal(err)
	}
	return gpus
}

func instances(gpus []nvmlmock.GPUState) int {
	n := 0
	for _, g := range gpus {
		n += len(g.Instances)
	}
	return n
}
