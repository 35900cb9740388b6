package node

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/e2e/framework/cluster"
	"github.com/tessera-gpu/tessera/e2e/framework/realnode"
	"github.com/tessera-gpu/tessera/internal/sharing/mpsstandin"
)

// TestRollingUpgradeLosesNothing runs a whole GPU, a MIG partition and an MPS
// share, one per GPU, then upgrades the chart with Helm with a changed plugin
// pod template: the DaemonSet's surge runs the old and the new plugin at once,
// claims prepared meanwhile and after (the last one by the new plugin alone)
// start, no prepare fails, no device is allocated twice, the running share
// container's new process still gets its limits through the same MPS pipe
// directory, and only running shares have MPS directories. Then the kubelet
// is restarted: every pod keeps running, and a new claim is still prepared.
func TestRollingUpgradeLosesNothing(t *testing.T) {
	needGPUs(t, 3)
	t.Cleanup(func() { checkNoMPSLeft(t) })
	ns := newNamespace(t)
	type running struct {
		claim *resourceapi.ResourceClaim
		pod   *corev1.Pod
	}
	start := func(name string, r resourceapi.DeviceRequest) running {
		claim := createClaim(t, ns, name, r)
		return running{claim, createPod(t, ns, name, claim.Name, withMPSClient)}
	}
	share := func() resourceapi.DeviceRequest { return withMemory(request(gpuapi.ClassShared), "20Gi") }
	mig := func() resourceapi.DeviceRequest { return request(gpuapi.ClassMIG, profileIs("1g.18gb")) }
	pods := []running{start("whole", request(gpuapi.ClassGPU)), start("mig", mig()), start("share", share())}
	for i := range pods {
		pods[i].pod = waitRunning(t, pods[i].pod)
	}
	shared := pods[2]
	shareSpec := specEdits(t, claimSpec(t, shared.claim))
	before := probe(t, shared.pod, nil, []string{"/tmp/nvidia-mps"})
	if before.env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "" {
		t.Fatalf("share's container has no MPS memory limit before the upgrade (env %v)", before.env)
	}
	// The share's daemon, a real process of the old plugin's container,
	// answers with the claim's limits, and serves a client with a server,
	// as a CUDA process's first connection makes it start one.
	gpu, limits := specLimits(t, shareSpec)
	pipe := shareSpec.mounts[mpsPipeDir]
	waitLimits(t, shared.pod, gpu, limits)
	oldServer := startServer(t, shared.pod, pipe)
	oldDaemon, _ := mpsProcess(t, pipe, mpsstandin.ControlName)

	old, err := node.PluginPod(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	watch := watchPluginPods(t)
	// Host networking gives the plugin's ports to the node: the new pod
	// could not be scheduled beside the old one on the same ports, so the
	// upgrade moves them, as a user upgrading a host-network install must.
	ports, err := cluster.FreePorts(2)
	if err != nil {
		t.Fatal(err)
	}
	if err := realnode.UpgradeChart(t.Context(), cluster.DefaultHelm(), local.Kubeconfig, []string{
		"kubeletPlugin.podAnnotations.upgraded=at-" + strconv.FormatInt(time.Now().Unix(), 10),
		"kubeletPlugin.metricsPort=" + strconv.Itoa(ports[0]),
		"kubeletPlugin.healthcheckPort=" + strconv.Itoa(ports[1]),
	}); err != nil {
		t.Fatal(err)
	}
	// Prepared by whichever plugin the kubelet calls during the update.
	pods = append(pods, start("mig-during", mig()))
	if err := node.WaitPlugin(t.Context(), old.UID); err != nil {
		t.Fatalf("new plugin pod: %v", err)
	}
	waitOldPluginGone(t, old.UID)
	if got := watch(); got < 2 {
		t.Errorf("at most %d plugin pod(s) ran at once during the upgrade, want the old and the new side by side (maxSurge 1)", got)
	}
	// Only the new plugin serves now.
	pods = append(pods, start("share-after", share()))
	for i := range pods {
		pods[i].pod = waitRunning(t, pods[i].pod)
	}
	checkNoFailedPrepare(t, ns)
	checkAllocatedOnce(t, ns)

	after := probe(t, shared.pod, nil, []string{"/tmp/nvidia-mps"})
	for _, k := range []string{"CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"} {
		if after.env[k] != before.env[k] || after.env[k] != shareSpec.env[k] {
			t.Errorf("share's new process after the upgrade: %s=%q, want %q as before and in its spec (%q)", k, after.env[k], before.env[k], shareSpec.env[k])
		}
	}
	if after.files["/tmp/nvidia-mps"] != before.files["/tmp/nvidia-mps"] || after.files["/tmp/nvidia-mps"] != hostFile(t, pipe) {
		t.Errorf("share's /tmp/nvidia-mps after the upgrade is %q, want the same directory as before (%q) and the plugin's %s (%q)",
			after.files["/tmp/nvidia-mps"], before.files["/tmp/nvidia-mps"], pipe, hostFile(t, pipe))
	}
	checkMPSDirs(t, pipe, shared.claim, pods[4].claim)
	// The old plugin's daemon and server ended with its container; the new
	// plugin's daemon serves the running container with the same limits.
	waitLimits(t, shared.pod, gpu, limits)
	for _, pid := range []int{oldDaemon, oldServer} {
		if mpsstandin.Running(pid) {
			t.Errorf("MPS process %d of the old plugin still runs after the upgrade", pid)
		}
	}
	// A server of the new daemon, which unpreparing the share at the end
	// must end (checkNoMPSLeft).
	startServer(t, shared.pod, pipe)

	if err := node.RestartKubelet(t.Context(), false); err != nil {
		t.Fatalf("restart kubelet: %v", err)
	}
	for _, r := range pods {
		p, err := local.Client.CoreV1().Pods(ns).Get(t.Context(), r.pod.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if p.Status.Phase != corev1.PodRunning || len(p.Status.ContainerStatuses) != 1 || p.Status.ContainerStatuses[0].RestartCount != 0 {
			t.Errorf("after the kubelet restart pod %s is %s, want it running, never restarted", p.Name, statusSummary(p))
		}
	}
	waitRunning(t, start("mig-after-kubelet", mig()).pod)
	checkNoFailedPrepare(t, ns)
	checkAllocatedOnce(t, ns)
}

// needGPUs skips a test that needs more GPUs than the node's mock has.
func needGPUs(t *testing.T, n int) {
	t.Helper()
	needNode(t)
	if have, _ := strconv.Atoi(os.Getenv("TESSERA_NODE_GPUS")); have < n {
		t.Skipf("needs %d GPUs on the node: run with TESSERA_NODE_GPUS=%d", n, n)
	}
}

// watchPluginPods polls the node's plugin pods until the returned function is
// called, which returns the most that ran ready at once.
func watchPluginPods(t *testing.T) func() int {
	ctx, cancel := context.WithCancel(t.Context())
	var (
		mu   sync.Mutex
		most int
		wg   sync.WaitGroup
	)
	wg.Go(func() {
		for ctx.Err() == nil {
			if list, err := node.PluginPods(ctx); err == nil {
				ready := 0
				for i := range list {
					if realnodePodReady(&list[i]) {
						ready++
					}
				}
				mu.Lock()
				most = max(most, ready)
				mu.Unlock()
			}
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	})
	return func() int {
		cancel()
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		return most
	}
}

func realnodePodReady(p *corev1.Pod) bool {
	if p.Status.Phase != corev1.PodRunning {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// waitOldPluginGone waits until the old plugin pod is removed: the update has
// then finished on the node.
func waitOldPluginGone(t *testing.T, old types.UID) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		list, err := node.PluginPods(t.Context())
		if err == nil && !slices.ContainsFunc(list, func(p corev1.Pod) bool { return p.UID == old }) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("old plugin pod %v still there after the update (%v)", old, err)
		}
		time.Sleep(pollEvery)
	}
}

// checkNoFailedPrepare fails the test for any pod of ns the kubelet could not
// prepare claims for, even once, other than with a message containing one of
// tolerated.
func checkNoFailedPrepare(t *testing.T, ns string, tolerated ...string) {
	t.Helper()
	events, err := local.Client.CoreV1().Events(ns).List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range events.Items {
		if e.Reason == reasonFailedPrepare && !slices.ContainsFunc(tolerated, func(s string) bool { return strings.Contains(e.Message, s) }) {
			t.Errorf("pod %s: %s %s", e.InvolvedObject.Name, e.Reason, e.Message)
		}
	}
}

// checkAllocatedOnce fails the test where two claims of ns share a device
// that is not a shared one, or where a whole GPU's claim shares its GPU with
// any other claim.
func checkAllocatedOnce(t *testing.T, ns string) {
	t.Helper()
	claims, err := local.Client.ResourceV1().ResourceClaims(ns).List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	byDevice := map[string][]string{}
	byGPU := map[string][]string{}
	wholeGPUs := map[string]bool{}
	for _, c := range claims.Items {
		if c.Status.Allocation == nil {
			t.Errorf("claim %s is not allocated", c.Name)
			continue
		}
		for _, r := range c.Status.Allocation.Devices.Results {
			byDevice[r.Device] = append(byDevice[r.Device], c.Name)
			gpu := gpuOf(r.Device)
			byGPU[gpu] = append(byGPU[gpu], c.Name)
			if r.Device == gpu {
				wholeGPUs[gpu] = true
			}
		}
	}
	for _, d := range slices.Sorted(maps.Keys(byDevice)) {
		if len(byDevice[d]) > 1 && !strings.HasSuffix(d, "-shared") {
			t.Errorf("device %s allocated to claims %v", d, byDevice[d])
		}
	}
	for gpu := range wholeGPUs {
		if len(byGPU[gpu]) > 1 {
			t.Errorf("whole %s shares its GPU with claims %v", gpu, byGPU[gpu])
		}
	}
}

// gpuOf is the GPU a device of the pool is on: gpu-N of gpu-N,
// gpu-N-shared and gpu-N-mig-... (docs: DESIGN's device names).
func gpuOf(device string) string {
	parts := strings.SplitN(device, "-", 3)
	if len(parts) < 2 {
		return device
	}
	return parts[0] + "-" + parts[1]
}

// checkMPSDirs fails the test unless the MPS daemons' directory (the parent of
// each daemon's, which holds pipe) holds one daemon per running share, and no
// MPS process runs for any other.
func checkMPSDirs(t *testing.T, pipe string, shares ...*resourceapi.ResourceClaim) {
	t.Helper()
	root := filepath.Dir(filepath.Dir(pipe))
	entries, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	var dirs []string
	for _, e := range entries {
		if e.IsDir() {
			dirs = append(dirs, e.Name())
		}
	}
	var want []string
	for _, c := range shares {
		want = append(want, filepath.Base(filepath.Dir(specEdits(t, claimSpec(t, c)).mounts["/tmp/nvidia-mps"])))
	}
	slices.Sort(want)
	if !slices.Equal(dirs, want) {
		t.Errorf("MPS daemon directories in %s: %v, want the running shares' %v", root, dirs, want)
	}
	for _, pid := range mpsstandin.ProcessesUnder(root) {
		if !slices.ContainsFunc(want, func(d string) bool { return mpsPipeOf(pid) == filepath.Join(root, d, "pipe") }) {
			t.Errorf("MPS process %d (pipe %s) serves no running share", pid, mpsPipeOf(pid))
		}
	}
}

// startServer makes the pod's MPS daemon start a server, as a CUDA client's
// connection does, and returns the server's node PID.
func startServer(t *testing.T, pod *corev1.Pod, pipe string) int {
	t.Helper()
	execIn(t, pod, "echo 'start_server -uid 0' | "+mpsClientPath)
	pid, _ := mpsProcess(t, pipe, mpsstandin.ServerName)
	if pid == 0 {
		t.Fatalf("no MPS server process runs for %s after start_server", pipe)
	}
	return pid
}

// mpsPipeOf is the process's CUDA_MPS_PIPE_DIRECTORY.
func mpsPipeOf(pid int) string {
	env, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	for kv := range strings.SplitSeq(string(env), "\x00") {
		if v, ok := strings.CutPrefix(kv, "CUDA_MPS_PIPE_DIRECTORY="); ok {
			return v
		}
	}
	return ""
}
