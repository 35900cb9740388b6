// Package realnode runs a real Kubernetes node on the local machine next to the
// local control plane (e2e/framework/cluster): containerd 2.x with its CRI plugin and CDI,
// runc, the kubelet built from the pinned k8s.io/kubernetes, and a fake driver
// root laid out like a real install. Tessera runs on it as a user installs it:
// its image imported into containerd, its chart installed with the Helm CLI
// (InstallChart), its plugin the chart's DaemonSet pod on mock NVML. It needs
// root and a host with cgroups, overlayfs and mknod (CheckHost says what is
// missing); images are imported, never pulled. make node-e2e runs the tests in
// e2e/node on it.
package realnode

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/klog/v2"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/e2e/framework/cluster"
	"golang.org/x/sys/unix"
)

// NodeBinaries are what make node-binaries puts in the node's bin dir.
var NodeBinaries = []string{"kubelet", "containerd", "containerd-shim-runc-v2", "ctr", "pause"}

// NodeName is the name of a real node on this machine (see Options.Name).
const NodeName = "127.0.0.1"

// DefaultBinDir is where make node-binaries puts them: $TESSERA_CACHE/node/bin,
// next to the control plane's bin dir.
func DefaultBinDir() string {
	return filepath.Join(filepath.Dir(cluster.DefaultBinDir()), "node", "bin")
}

// Options describe a real node.
type Options struct {
	// Name is the node's name. Use NodeName: the kubelet refuses a loopback
	// --node-ip, and only a node named by its IP gets 127.0.0.1 as its address,
	// through which the API server reaches the kubelet (logs, exec).
	Name string
	// GPUs is how many GPUs the fake driver root has device nodes for; it
	// must cover the mock NVML's GPUs (the chart's kubeletPlugin.nvml).
	GPUs int
	// BinDir holds NodeBinaries.
	BinDir string
	// Images are OCI archives imported into containerd besides the pause and
	// test images: the product image, which the chart's pods run.
	Images []Image
	// MPSStandin, when set, is the stand-in MPS program (e2e/framework/realnode/mps-standin)
	// that the fake driver root gets as its MPS control daemon and server
	// (InstallMPSStandin), in place of placeholders that do not run.
	MPSStandin string
	// Layout says where the node keeps everything; logs go to the control
	// plane's log dir, the pods' to <Layout.Dir>/kubelet/pod-logs.
	Layout Layout
}

// Image is an OCI image archive and the name it is imported as.
type Image struct {
	// Archive is the OCI archive's path.
	Archive string
	// Ref is repository:tag, the name the chart's pods ask for.
	Ref string
}

// Node is a running real node. Tessera runs on it as the chart's pods: the
// node does not start the plugin itself (see InstallChart and WaitPlugin).
type Node struct {
	Name string
	Layout
	// Host is what CheckHost found.
	Host *Host

	opts       Options
	cp         *cluster.ControlPlane
	containerd *containerd
	kubelet    *kubelet
}

// Start checks the host, then starts containerd (importing the pause and test
// images and opts.Images) and the kubelet, and returns once the node is Ready.
// On error everything started is stopped again.
func Start(ctx context.Context, cp *cluster.ControlPlane, opts Options) (_ *Node, err error) {
	host, err := CheckHost(opts.BinDir)
	if err != nil {
		return nil, err
	}
	if !filepath.IsAbs(opts.Layout.Dir) {
		return nil, fmt.Errorf("node work directory %q is not absolute", opts.Layout.Dir)
	}
	if err := opts.Layout.checkSocketPaths(); err != nil {
		return nil, err
	}
	dir := opts.Layout.Dir
	n := &Node{Name: opts.Name, Layout: opts.Layout, Host: host, opts: opts, cp: cp}
	defer func() {
		if err != nil {
			_ = n.Stop(context.WithoutCancel(ctx))
		}
	}()
	if err := sharedMount(dir); err != nil {
		return nil, err
	}
	for _, d := range []string{n.CDIRoot, n.StateDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("create %s: %w", d, err)
		}
	}
	if err := MakeDriverRoot(n.DriverRoot, n.Driver, opts.GPUs); err != nil {
		return nil, err
	}
	if opts.MPSStandin != "" {
		if err := InstallMPSStandin(n.DriverRoot, n.Driver, opts.MPSStandin); err != nil {
			return nil, err
		}
	}
	logger := klog.FromContext(ctx)
	if n.containerd, err = startContainerd(ctx, filepath.Join(dir, "containerd"), opts.BinDir, cp.LogDir, n.CDIRoot, host); err != nil {
		return nil, err
	}
	pause, err := PauseImageArchive(filepath.Join(opts.BinDir, "pause"))
	if err != nil {
		return nil, err
	}
	busybox, err := TestImageArchive(host.Busybox)
	if err != nil {
		return nil, err
	}
	for _, img := range [][]byte{pause, busybox} {
		if err := n.containerd.importImage(ctx, img); err != nil {
			return nil, err
		}
	}
	for _, img := range opts.Images {
		if err := n.containerd.importArchive(ctx, img); err != nil {
			return nil, err
		}
	}
	logger.V(1).Info("containerd ready", "socket", n.containerd.socket)
	if n.kubelet, err = newKubelet(cp, filepath.Dir(n.KubeletDir), n.KubeletDir, opts.BinDir, cp.LogDir, opts.Name, n.containerd.socket, host); err != nil {
		return nil, err
	}
	if err := n.kubelet.start(); err != nil {
		return nil, err
	}
	if err := n.waitReady(ctx, time.Time{}); err != nil {
		return nil, err
	}
	logger.V(1).Info("kubelet ready", "node", opts.Name)
	return n, nil
}

// sharedMount makes dir a mount point of its own with shared propagation: the
// chart mounts the plugin's state directory Bidirectional (each MPS share's
// /dev/shm is a mount the plugin makes there) and the driver root
// HostToContainer, which containerd allows only from shared (or slave) mounts,
// as on a real node whose / is shared (systemd makes it so). A development
// sandbox's / is often private.
func sharedMount(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	if err := unix.Mount(dir, dir, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind-mount node directory %s: %w", dir, err)
	}
	if err := unix.Mount("", dir, "", unix.MS_SHARED|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("make node directory %s a shared mount: %w", dir, err)
	}
	return nil
}

// waitReady waits until the node's Ready condition is true with a heartbeat
// at or after since (heartbeats are whole seconds).
func (n *Node) waitReady(ctx context.Context, since time.Time) error {
	var last string
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		if exited, err := n.kubelet.proc.Exited(); exited {
			return false, fmt.Errorf("kubelet exited (log: %s): %w", n.kubelet.proc.LogPath, err)
		}
		node, err := n.cp.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			last = err.Error()
			return false, nil
		}
		for _, c := range node.Status.Conditions {
			if c.Type == corev1.NodeReady {
				last = fmt.Sprintf("Ready=%s %s: %s", c.Status, c.Reason, c.Message)
				return c.Status == corev1.ConditionTrue && !c.LastHeartbeatTime.Time.Before(since), nil
			}
		}
		return false, nil
	})
	if err != nil {
		return fmt.Errorf("node %s not ready (last: %s; log: %s): %w", n.Name, last, n.kubelet.proc.LogPath, err)
	}
	return nil
}

// PluginPod returns the chart's plugin pod on the node (the newest, should a
// deleted one still be terminating).
func (n *Node) PluginPod(ctx context.Context) (*corev1.Pod, error) {
	return n.pod(ctx, PluginPodSelector)
}

// pod returns the newest pod on the node in the release namespace that
// selector selects and that is not being deleted.
func (n *Node) pod(ctx context.Context, selector string) (*corev1.Pod, error) {
	list, err := n.cp.Client.CoreV1().Pods(cluster.ReleaseNamespace).List(ctx, metav1.ListOptions{
		LabelSelector: selector,
		FieldSelector: fields.OneTermEqualSelector("spec.nodeName", n.Name).String(),
	})
	if err != nil {
		return nil, err
	}
	var newest *corev1.Pod
	for i := range list.Items {
		p := &list.Items[i]
		if p.DeletionTimestamp == nil && (newest == nil || newest.CreationTimestamp.Before(&p.CreationTimestamp)) {
			newest = p
		}
	}
	if newest == nil {
		return nil, fmt.Errorf("no pod %s on node %s", selector, n.Name)
	}
	return newest, nil
}

// WaitPodReady waits until a pod on the node in the release namespace that
// selector selects is ready (e.g. the chart's controller).
func (n *Node) WaitPodReady(ctx context.Context, selector string) error {
	var last string
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		pod, err := n.pod(ctx, selector)
		if err != nil {
			last = err.Error()
			return false, nil
		}
		last = fmt.Sprintf("pod %s is %s", pod.Name, podState(pod))
		return podReady(pod), nil
	})
	if err != nil {
		return fmt.Errorf("%s on node %s not ready (last: %s; logs in %s): %w", selector, n.Name, last, filepath.Join(n.kubelet.dir, "pod-logs"), err)
	}
	return nil
}

// ContainerProcess returns the host PID of the container's init process, from
// containerd's task list; containerID is the pod status's
// containerd://<id>.
func (n *Node) ContainerProcess(ctx context.Context, containerID string) (int, error) {
	id := strings.TrimPrefix(containerID, "containerd://")
	out, err := n.containerd.ctr(ctx, nil, "tasks", "ls")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == id {
			return strconv.Atoi(f[1])
		}
	}
	return 0, fmt.Errorf("containerd runs no task %s", id)
}

// PluginPodSelector selects the chart's plugin pods.
const PluginPodSelector = "app.kubernetes.io/component=kubelet-plugin"

// WaitPlugin waits until the chart's plugin pod on the node, other than the
// pod whose UID is not (empty: any), runs with its container ready, the
// kubelet has registered the plugin, and the node's pool is published
// complete.
func (n *Node) WaitPlugin(ctx context.Context, not types.UID) error {
	var last string
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		pod, err := n.PluginPod(ctx)
		if err != nil {
			last = err.Error()
			return false, nil
		}
		if pod.UID == not {
			last = fmt.Sprintf("plugin pod %s is still the old one", pod.Name)
			return false, nil
		}
		if !podReady(pod) {
			last = fmt.Sprintf("plugin pod %s is %s", pod.Name, podState(pod))
			return false, nil
		}
		if registered, err := n.pluginRegistered(ctx); !registered {
			last = fmt.Sprintf("kubelet has registered no socket %s in %s (%v)", registrationSocketPattern, n.kubelet.PluginRegistryDir(), err)
			return false, nil
		}
		complete, err := n.poolComplete(ctx)
		if err != nil || !complete {
			last = fmt.Sprintf("pool of node %s not complete (%v)", n.Name, err)
			return false, nil
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("plugin on node %s not ready (last: %s; logs: %s): %w", n.Name, last, n.PluginLog(), err)
	}
	return nil
}

// registrationSocketPattern matches the plugin's registration sockets: the
// kubelet plugin helper names each with a random part, so that the old and the
// new plugin of a rolling update register side by side.
const registrationSocketPattern = gpuapi.DriverName + "-*-reg.sock"

// pluginRegistered reports whether the kubelet has registered one of the
// plugin's registration sockets that exist now (a killed plugin's may linger).
func (n *Node) pluginRegistered(ctx context.Context) (bool, error) {
	sockets, err := filepath.Glob(filepath.Join(n.kubelet.PluginRegistryDir(), registrationSocketPattern))
	if err != nil || len(sockets) == 0 {
		return false, err
	}
	metrics, err := n.kubelet.metrics(ctx)
	if err != nil {
		return false, err
	}
	for _, s := range sockets {
		if strings.Contains(metrics, fmt.Sprintf(`plugin_manager_total_plugins{socket_path=%q,state="actual_state_of_world"} 1`, s)) {
			return true, nil
		}
	}
	return false, nil
}

func podReady(p *corev1.Pod) bool {
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

// podState says why a pod is not ready, for error messages.
func podState(p *corev1.Pod) string {
	var b strings.Builder
	b.WriteString(string(p.Status.Phase))
	for _, c := range p.Status.ContainerStatuses {
		switch {
		case c.State.Waiting != nil:
			fmt.Fprintf(&b, "; %s waiting: %s %s", c.Name, c.State.Waiting.Reason, c.State.Waiting.Message)
		case c.State.Terminated != nil:
			fmt.Fprintf(&b, "; %s terminated: %s (exit %d)", c.Name, c.State.Terminated.Reason, c.State.Terminated.ExitCode)
		default:
			fmt.Fprintf(&b, "; %s running, ready=%t, restarts %d", c.Name, c.Ready, c.RestartCount)
		}
	}
	return b.String()
}

// poolComplete reports whether the node's pools have every slice of their
// newest generation published.
func (n *Node) poolComplete(ctx context.Context) (bool, error) {
	list, err := n.cp.Client.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{
		FieldSelector: fields.Set{"spec.nodeName": n.Name, "spec.driver": gpuapi.DriverName}.String(),
	})
	if err != nil || len(list.Items) == 0 {
		return false, err
	}
	newest := map[string]int64{}
	for _, s := range list.Items {
		newest[s.Spec.Pool.Name] = max(newest[s.Spec.Pool.Name], s.Spec.Pool.Generation)
	}
	have, want := map[string]int64{}, map[string]int64{}
	for _, s := range list.Items {
		if s.Spec.Pool.Generation == newest[s.Spec.Pool.Name] {
			have[s.Spec.Pool.Name]++
			want[s.Spec.Pool.Name] = s.Spec.Pool.ResourceSliceCount
		}
	}
	for pool := range newest {
		if have[pool] != want[pool] {
			return false, nil
		}
	}
	return true, nil
}

// RestartPlugin deletes the plugin's pod (at once, as a crash, when crash is
// set: grace period 0) and waits until the DaemonSet's new pod serves.
func (n *Node) RestartPlugin(ctx context.Context, crash bool) error {
	pod, err := n.PluginPod(ctx)
	if err != nil {
		return err
	}
	opts := metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &pod.UID}}
	if crash {
		opts.GracePeriodSeconds = new(int64(0))
	}
	if err := n.cp.Client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, opts); err != nil {
		return fmt.Errorf("delete plugin pod %s: %w", pod.Name, err)
	}
	return n.WaitPlugin(ctx, pod.UID)
}

// RestartKubelet stops the kubelet (killed when crash is set) and starts it
// again, returning once it reports the node Ready again, has registered the
// plugin anew and holds the node's pods again. Containers keep running
// meanwhile, as with a real kubelet restart.
func (n *Node) RestartKubelet(ctx context.Context, crash bool) error {
	if crash {
		n.kubelet.proc.Kill()
	} else if err := n.kubelet.proc.Stop(30 * time.Second); err != nil {
		return err
	}
	// The new kubelet's first heartbeat often falls in the second of the
	// restart; a heartbeat must not be before that second. (One of the old
	// kubelet in that same second passes too, but then the waits below
	// still need the new kubelet serving.)
	restarted := time.Now().Truncate(time.Second)
	if err := n.kubelet.start(); err != nil {
		return err
	}
	if err := n.waitReady(ctx, restarted); err != nil {
		return err
	}
	if err := n.WaitPlugin(ctx, ""); err != nil {
		return err
	}
	return n.waitPodsHeld(ctx)
}

// waitPodsHeld waits until the kubelet holds every unfinished pod the API
// server has bound to the node. A restarted kubelet reports the node Ready
// and registers plugins before its API source has delivered its pods (about a
// second on this machine); until then it answers exec and logs of a running
// pod with "pod does not exist".
func (n *Node) waitPodsHeld(ctx context.Context) error {
	var last string
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		bound, err := n.cp.Client.CoreV1().Pods(metav1.NamespaceAll).List(ctx, metav1.ListOptions{
			FieldSelector: fields.OneTermEqualSelector("spec.nodeName", n.Name).String(),
		})
		if err != nil {
			last = err.Error()
			return false, nil
		}
		held, err := n.kubelet.pods(ctx)
		if err != nil {
			last = err.Error()
			return false, nil
		}
		uids := sets.New[types.UID]()
		for _, p := range held {
			uids.Insert(p.UID)
		}
		for _, p := range bound.Items {
			if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
				continue
			}
			if !uids.Has(p.UID) {
				last = fmt.Sprintf("kubelet does not hold pod %s/%s yet", p.Namespace, p.Name)
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("kubelet of node %s has not taken its pods back (last: %s; log: %s): %w", n.Name, last, n.kubelet.proc.LogPath, err)
	}
	return nil
}

// PluginLog is where the kubelet keeps the plugin pods' logs
// (<namespace>_<pod>_<uid>/plugin/<restart>.log).
func (n *Node) PluginLog() string {
	return filepath.Join(n.kubelet.dir, "pod-logs", cluster.ReleaseNamespace+"_*kubelet-plugin*", "plugin")
}

// KubeletLog is the path of the kubelet's log.
func (n *Node) KubeletLog() string { return n.kubelet.proc.LogPath }

// Stop stops the kubelet, kills every container left (the chart's pods
// included), stops containerd and unmounts whatever the node mounted under its
// work directory, the directory's own shared mount last.
func (n *Node) Stop(ctx context.Context) error {
	var errs []error
	if n.kubelet != nil && n.kubelet.proc != nil {
		errs = append(errs, n.kubelet.proc.Stop(30*time.Second))
	}
	if n.containerd != nil {
		ctx, cancel := context.WithTimeout(ctx, time.Minute)
		errs = append(errs, n.containerd.killAll(ctx))
		cancel()
		errs = append(errs, n.containerd.proc.Stop(30*time.Second))
	}
	errs = append(errs, unmountUnder(n.Dir))
	return errors.Join(errs...)
}

// unmountUnder detaches every mount below dir, deepest first: the kubelet's
// volumes and its shared root, containerd's snapshots, sandbox /dev/shm and
// network namespaces.
func unmountUnder(dir string) error {
	if dir == "" {
		return nil
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return fmt.Errorf("list mounts: %w", err)
	}
	defer func() { _ = f.Close() }() // read only: a failed close loses nothing
	var points []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		fieldsOf := strings.Fields(s.Text())
		if len(fieldsOf) < 5 {
			continue
		}
		// Mount points escape spaces and such as octal; the work directory has none.
		if p := fieldsOf[4]; p == dir || strings.HasPrefix(p, dir+"/") {
			points = append(points, p)
		}
	}
	if err := s.Err(); err != nil {
		return fmt.Errorf("list mounts: %w", err)
	}
	sort.Slice(points, func(i, j int) bool { return len(points[i]) > len(points[j]) })
	var errs []error
	for _, p := range points {
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}
