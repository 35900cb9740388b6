package node

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/internal/sharing"
	"github.com/tessera-gpu/tessera/internal/sharing/mpsstandin"
)

// The lane's plugin runs real MPS daemons: the fake driver root's
// nvidia-cuda-mps-control is the stand-in (e2e/framework/realnode/mps-standin), which the
// plugin starts through the same code as NVIDIA's on a GPU node
// (kubeletPlugin.driverMPS). These tests talk to those daemons from inside
// the claims' containers, as a CUDA process does: through the pipe directory
// the claim's CDI spec bind-mounts on /tmp/nvidia-mps.

// mpsClientPath is where withMPSClient mounts the driver root's
// nvidia-cuda-mps-control in a test pod; run without arguments it is the MPS
// client, which sends each line of its input to the daemon of
// CUDA_MPS_PIPE_DIRECTORY and prints the answer (nvidia-cuda-mps-control(1)).
const mpsClientPath = "/opt/mps/" + mpsstandin.ControlName

// mpsPipeDir is where a share's container has its pipe directory.
const mpsPipeDir = "/tmp/nvidia-mps"

// withMPSClient mounts the driver root's MPS control program into the pod.
func withMPSClient(p *corev1.Pod) {
	file := corev1.HostPathFile
	p.Spec.Volumes = append(p.Spec.Volumes, corev1.Volume{Name: "mps-client", VolumeSource: corev1.VolumeSource{
		HostPath: &corev1.HostPathVolumeSource{Path: node.MPSControl(), Type: &file},
	}})
	c := &p.Spec.Containers[0]
	c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: "mps-client", MountPath: mpsClientPath, ReadOnly: true})
}

// mpsLimits are a daemon's default limits, as its client reads them back.
type mpsLimits struct {
	// pinned is get_default_device_pinned_mem_limit of the share's GPU.
	pinned string
	// threads is get_default_active_thread_percentage.
	threads string
}

// specLimits returns the share's GPU and the limits its daemon must have:
// those the claim's CDI spec tells its clients (CUDA_MPS_PINNED_DEVICE_MEM_LIMIT
// "0=<n>M" for its one GPU, CUDA_MPS_ACTIVE_THREAD_PERCENTAGE), which the
// plugin set as the daemon's defaults.
func specLimits(t *testing.T, e edits) (string, mpsLimits) {
	t.Helper()
	gpu := e.env["NVIDIA_VISIBLE_DEVICES"]
	_, pinned, ok := strings.Cut(e.env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"], "=")
	if gpu == "" || !ok || pinned == "" {
		t.Fatalf("share's CDI spec has no GPU or no memory limit: %v", e.env)
	}
	// The daemon's default with none set (the stand-in answers as
	// nvidia-cuda-mps-control prints percentages, with one decimal).
	threads := "100.0"
	if v := e.env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"]; v != "" {
		threads = v + ".0"
	}
	return gpu, mpsLimits{pinned: pinned, threads: threads}
}

// readLimits runs the MPS client in the pod's container, a new process each
// time, and returns the limits its daemon answers.
func readLimits(ctx context.Context, pod *corev1.Pod, gpu string) (mpsLimits, error) {
	out, err := execTry(ctx, pod, fmt.Sprintf("printf 'get_default_device_pinned_mem_limit %s\\nget_default_active_thread_percentage\\n' | %s", gpu, mpsClientPath))
	if err != nil {
		return mpsLimits{}, err
	}
	f := strings.Fields(out)
	if len(f) != 2 {
		return mpsLimits{}, fmt.Errorf("MPS client in %s answered %q, want two values", pod.Name, out)
	}
	return mpsLimits{pinned: f[0], threads: f[1]}, nil
}

// waitLimits waits until the pod's container reads want back from its
// daemon: after the plugin restarted, its daemon comes back within the
// plugin's MPS check interval.
func waitLimits(t *testing.T, pod *corev1.Pod, gpu string, want mpsLimits) {
	t.Helper()
	var got mpsLimits
	var last error
	err := wait.PollUntilContextTimeout(t.Context(), pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		callCtx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		got, last = readLimits(callCtx, pod, gpu)
		return last == nil && got == want, nil
	})
	if err != nil {
		t.Fatalf("%s's container reads MPS limits %+v (last error: %v), want %+v from its daemon (plugin log: %s)", pod.Name, got, last, want, node.PluginLog())
	}
}

// mpsProcess returns the node's PID of the process named name (the control
// daemon, "-f", or a server) that serves the pipe directory, and its PID in
// the plugin's PID namespace, the number the plugin itself would see; 0 when
// none runs.
func mpsProcess(t *testing.T, pipe, name string) (host, inPlugin int) {
	t.Helper()
	for _, pid := range mpsstandin.ProcessesUnder(filepath.Dir(filepath.Dir(pipe))) {
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		args := strings.Split(string(cmdline), "\x00")
		if err != nil || filepath.Base(args[0]) != name || mpsPipeOf(pid) != pipe {
			continue
		}
		if name == mpsstandin.ControlName && (len(args) < 2 || args[1] != "-f") {
			continue // a control client
		}
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			continue
		}
		for line := range strings.SplitSeq(string(status), "\n") {
			if ns, ok := strings.CutPrefix(line, "NSpid:"); ok {
				f := strings.Fields(ns)
				inPlugin, _ = strconv.Atoi(f[len(f)-1])
			}
		}
		return pid, inPlugin
	}
	return 0, 0
}

// checkNoMPSLeft fails the test unless, once every pod of the test is gone,
// no MPS process runs for any claim (control daemon, server or client, found
// by the pipe directory in its environment) and no daemon directory is left.
// Registered before newNamespace, it runs after the namespace's cleanup.
func checkNoMPSLeft(t *testing.T) {
	t.Helper()
	root := filepath.Join(node.StateDir, "mps")
	var procs []int
	var dirs []string
	err := wait.PollUntilContextTimeout(context.Background(), pollEvery, waitTimeout, true, func(context.Context) (bool, error) {
		procs, dirs = mpsstandin.ProcessesUnder(root), nil
		entries, _ := os.ReadDir(root)
		for _, e := range entries {
			if e.IsDir() && !strings.HasPrefix(e.Name(), ".") {
				dirs = append(dirs, e.Name())
			}
		}
		return len(procs) == 0 && len(dirs) == 0, nil
	})
	if err != nil {
		t.Errorf("after every claim was unprepared, MPS processes %v and daemon directories %v are left in %s", procs, dirs, root)
	}
}

// TestMPSDaemonsServeThroughRestartsAndTrustNoTenantFile runs shares on
// real (stand-in) MPS daemons. A victim share's container reads its daemon's
// limits back through its mounted pipe directory. Three shares' containers,
// as root, each plant one thing in their own pipe directory where
// nvidia-cuda-mps-control keeps its PID file: a FIFO, a link to /dev/zero,
// the victim daemon's PID (as the plugin's PID namespace numbers it). The
// plugin must stay responsive: another share prepares meanwhile, stopping the
// PID planter's daemon kills nothing else (the victim's daemon runs on and
// answers), and the plugin, deleted as in a crash, comes back (it does not
// hang at start on what was planted). After the restart the victim's same
// running container, in a new process, reads the same limits through the
// same directory (inode) from a new daemon, the planters get theirs too, and
// only running shares have daemon processes; once the pods are gone no MPS
// process or directory is left.
func TestMPSDaemonsServeThroughRestartsAndTrustNoTenantFile(t *testing.T) {
	t.Cleanup(func() { checkNoMPSLeft(t) })
	ns := newNamespace(t)
	type share struct {
		claim *resourceapi.ResourceClaim
		pod   *corev1.Pod
	}
	start := func(name string) share {
		claim := createClaim(t, ns, name, withMemory(request(gpuapi.ClassShared), "10Gi"))
		return share{claim, createPod(t, ns, name, claim.Name, withMPSClient)}
	}
	victim := start("victim")
	planters := map[string]share{"fifo": start("fifo"), "zero": start("zero"), "pid": start("pid")}
	victim.pod = waitRunning(t, victim.pod)
	for k, s := range planters {
		s.pod = waitRunning(t, s.pod)
		planters[k] = s
	}
	spec := specEdits(t, claimSpec(t, victim.claim))
	gpu, want := specLimits(t, spec)
	pipe := spec.mounts[mpsPipeDir]
	waitLimits(t, victim.pod, gpu, want)
	inode := probe(t, victim.pod, nil, []string{mpsPipeDir}).files[mpsPipeDir]
	daemon, daemonInPlugin := mpsProcess(t, pipe, mpsstandin.ControlName)
	if daemon == 0 || daemonInPlugin == 0 {
		t.Fatalf("no control daemon process runs for the victim's pipe directory %s (MPS processes: %v)", pipe, mpsstandin.ProcessesUnder(filepath.Dir(filepath.Dir(pipe))))
	}

	pidFile := mpsPipeDir + "/" + sharing.PIDFile
	for name, script := range map[string]string{
		"fifo": "mkfifo " + pidFile + ".new && mv -f " + pidFile + ".new " + pidFile,
		"zero": "ln -sf /dev/zero " + pidFile,
		"pid":  fmt.Sprintf("echo %d > %s.new && mv -f %s.new %s", daemonInPlugin, pidFile, pidFile, pidFile),
	} {
		execIn(t, planters[name].pod, script)
	}
	t.Logf("planted a FIFO, a link to /dev/zero and PID %d (the victim's daemon, node PID %d) as PID files", daemonInPlugin, daemon)

	meanwhile := start("meanwhile")
	meanwhile.pod = waitRunning(t, meanwhile.pod)
	// Stopping the PID planter's daemon must stop that daemon alone.
	deletePod(t, planters["pid"].pod)
	waitUnprepared(t, planters["pid"].claim)
	if !mpsstandin.Running(daemon) {
		t.Errorf("the victim's control daemon (node PID %d) was killed when the claim that planted its PID was unprepared", daemon)
	}
	waitLimits(t, victim.pod, gpu, want)
	if now, _ := mpsProcess(t, pipe, mpsstandin.ControlName); now != daemon {
		t.Errorf("the victim's control daemon is node PID %d, want %d as before the plants: it was replaced", now, daemon)
	}

	if err := node.RestartPlugin(t.Context(), true); err != nil {
		t.Fatalf("restart the plugin with the planted files in place: %v", err)
	}
	waitLimits(t, victim.pod, gpu, want)
	if got := probe(t, victim.pod, nil, []string{mpsPipeDir}).files[mpsPipeDir]; got != inode || got != hostFile(t, pipe) {
		t.Errorf("victim's %s after the restart is %q, want the same directory as before (%q) and the plugin's %s (%q)", mpsPipeDir, got, inode, pipe, hostFile(t, pipe))
	}
	if now, _ := mpsProcess(t, pipe, mpsstandin.ControlName); now == 0 || now == daemon {
		t.Errorf("the victim's control daemon after the plugin's restart is node PID %d, want a new process (before: %d)", now, daemon)
	}
	for _, name := range []string{"fifo", "zero"} {
		s := planters[name]
		g, w := specLimits(t, specEdits(t, claimSpec(t, s.claim)))
		waitLimits(t, s.pod, g, w)
	}
	checkMPSDirs(t, pipe, victim.claim, planters["fifo"].claim, planters["zero"].claim, meanwhile.claim)
}
