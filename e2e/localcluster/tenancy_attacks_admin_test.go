package localcluster

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/e2e/framework/kubelet"
	"github.com/tessera-gpu/tessera/internal/nvml/nvmlmock"
	"github.com/tessera-gpu/tessera/internal/sharing"
	"github.com/tessera-gpu/tessera/internal/testing/builder"
)

// The admin-access attack of TestTenancyAttackMatrix: a tenant allowed DRA
// admin access asks for a MIG partition and a share with it, to have the
// plugin make a MIG instance and an MPS daemon that the scheduler counts
// for no one, on memory slices and compute it then hands to other claims.

// nodeHardware is what a local-cluster node's simulated GPUs hold, read from
// outside its plugin: the MIG state the plugin's mock NVML keeps in the
// plugin's state directory (as a GPU keeps it across plugin restarts), and
// the MPS daemons the plugin runs (one directory each under mps/ there).
type nodeHardware struct {
	GPUs    []nvmlmock.GPUState
	Daemons []string
}

// readNodeHardware reads nodeName's nodeHardware. A mock that never changed
// has written no state file: its GPUs hold no MIG instance.
func readNodeHardware(t *testing.T, nodeName string) (nodeHardware, error) {
	t.Helper()
	dir := node(t, nodeName).StateDir
	var hw nodeHardware
	gpus, err := nvmlmock.ReadState(filepath.Join(dir, nvmlmock.StateFileName))
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return hw, err
	default:
		hw.GPUs = gpus
	}
	entries, err := os.ReadDir(sharing.MPSRoot(dir))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return hw, fmt.Errorf("list MPS daemons: %w", err)
	}
	for _, e := range entries {
		hw.Daemons = append(hw.Daemons, e.Name())
	}
	return hw, nil
}

// migInstances lists the GPU instances hw's GPUs hold, "GPU <i>: profile
// <id> at <start>".
func (hw nodeHardware) migInstances() []string {
	var out []string
	for i, g := range hw.GPUs {
		for _, in := range g.Instances {
			out = append(out, fmt.Sprintf("GPU %d: profile %d at %d", i, in.ProfileID, in.Start))
		}
	}
	return out
}

// waitNodeHardwareIdle waits until nodeName's GPUs hold no MIG instance and
// its plugin runs no MPS daemon (earlier tests' claims may still be
// unpreparing), and returns that state.
func waitNodeHardwareIdle(ctx context.Context, t *testing.T, nodeName string) nodeHardware {
	t.Helper()
	var hw nodeHardware
	var readErr error
	err := wait.PollUntilContextTimeout(ctx, pollEvery, waitTimeout, true, func(context.Context) (bool, error) {
		hw, readErr = readNodeHardware(t, nodeName)
		return readErr == nil && len(hw.migInstances()) == 0 && len(hw.Daemons) == 0, nil
	})
	if err != nil {
		t.Fatalf("node %s still holds MIG instances %v or MPS daemons %v after %s (read error: %v)", nodeName, hw.migInstances(), hw.Daemons, waitTimeout, readErr)
	}
	return hw
}

// waitPrepareRefusedOrRunning waits until the kubelet stand-in has either
// failed to prepare pod's claims (the plugin's message is returned) or
// started it ("" is returned): the plugin has acted on the claim either way.
func waitPrepareRefusedOrRunning(ctx context.Context, t *testing.T, pod *corev1.Pod) string {
	t.Helper()
	var refusal string
	err := wait.PollUntilContextTimeout(ctx, pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		for _, e := range events(ctx, pod, kubelet.ReasonFailedPrepare) {
			refusal = e.Message
			return true, nil
		}
		p, err := local.Client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		return err == nil && p.Status.Phase == corev1.PodRunning, nil
	})
	if err != nil {
		t.Fatalf("pod %s neither refused by the plugin nor running within %s: %v; events: %s", pod.Name, waitTimeout, err, eventSummary(pod))
	}
	return refusal
}

// attackAdminAccessDevices: in adminNS (a namespace of a tenant allowed
// admin access, with DRA's admin-access label), one pod asks with admin
// access for a 1g.18gb MIG partition of the tenancy node's GPU 0 and
// another for a share of its GPU 1 (each on its own GPU, so that neither
// refusal hides the other). The attacker's goal is a MIG instance or an
// MPS daemon that the scheduler does not count. The plugin refuses both
// prepares; afterwards the node's GPUs hold no MIG instance, with their MIG
// modes as they were, and its plugin runs no MPS daemon; and while both
// admin-access claims stay allocated, a pod of another tenant (of
// bystanderNS) asking for both GPUs whole, which overlap both devices, is
// allocated, admitted and runs.
func attackAdminAccessDevices(ctx context.Context, t *testing.T, adminNS, bystanderNS string) {
	t.Helper()
	waitTenancyGPUsFree(ctx, t)
	before := waitNodeHardwareIdle(ctx, t, tenancyNode.Name)

	admin := func(r *builder.RequestBuilder, gpu int) resourceapi.DeviceRequest {
		req := r.Selector(fmt.Sprintf("device.attributes[%q].%s == %d", gpuapi.DriverName, gpuapi.AttrIndex, gpu)).Obj()
		req.Exactly.AdminAccess = new(true)
		return req
	}
	createTemplate(t, adminNS, "admin-mig", admin(builder.MakeRequest("gpu", gpuapi.ClassMIG).Profile("1g.18gb"), 0))
	createTemplate(t, adminNS, "admin-share", admin(builder.MakeRequest("gpu", gpuapi.ClassShared), 1))
	pods := []*corev1.Pod{
		createPod(t, adminNS, "admin-mig", "admin-mig", onTenancyNodeOnly),
		createPod(t, adminNS, "admin-share", "admin-share", onTenancyNodeOnly),
	}
	var bystander *corev1.Pod
	t.Cleanup(func() {
		ctx := context.WithoutCancel(ctx)
		deletePodsAndClaims(ctx, t, adminNS, pods...)
		if bystander != nil {
			deletePodsAndClaims(ctx, t, bystanderNS, bystander)
		}
	})

	ran := map[string]bool{}
	for _, p := range pods {
		a := waitAllocated(t, p)
		for _, r := range a.Devices() {
			if r.AdminAccess == nil || !*r.AdminAccess {
				t.Fatalf("pod %s's claim was allocated %s without admin access; this does not try the attack", p.Name, r.Device)
			}
		}
		refusal := waitPrepareRefusedOrRunning(ctx, t, p)
		ran[p.Name] = refusal == ""
		if refusal != "" && !strings.Contains(refusal, "admin access") {
			t.Errorf("pod %s: the plugin refused with %q, want it to say admin access", p.Name, refusal)
		}
	}

	after, err := readNodeHardware(t, tenancyNode.Name)
	if err != nil {
		t.Fatal(err)
	}
	if got := after.migInstances(); len(got) != 0 {
		t.Errorf("admin access made MIG instances on node %s: %v", tenancyNode.Name, got)
	}
	mode := func(hw nodeHardware) []int {
		var out []int
		for _, g := range hw.GPUs {
			out = append(out, g.MIGMode)
		}
		return out
	}
	if diff := cmp.Diff(mode(before), mode(after)); diff != "" {
		t.Errorf("admin access changed the MIG modes of node %s's GPUs (-before +after):\n%s", tenancyNode.Name, diff)
	}
	if len(after.Daemons) != 0 {
		t.Errorf("admin access started MPS daemons on node %s: %v", tenancyNode.Name, after.Daemons)
	}
	for name, running := range ran {
		if running {
			t.Errorf("pod %s runs with its admin-access device prepared", name)
		}
	}

	createTemplate(t, bystanderNS, "whole", builder.MakeRequest("gpu", gpuapi.ClassGPU).Count(2).Obj())
	bystander = createPod(t, bystanderNS, "whole", "whole", onTenancyNodeOnly)
	waitRunning(t, bystander)
}
