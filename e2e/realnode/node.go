// Package realnode runs a real Kubernetes node on the local machine next to the
// local control plane (e2e/cluster): containerd 2.x with its CRI plugin and CDI,
// runc, the kubelet built from the pinned k8s.io/kubernetes, and the real
// dra-kubelet-plugin on a mock NVML with a fake driver root of real device
// nodes. It needs root and a host with cgroups, overlayfs and mknod (CheckHost
// says what is missing); images are built from local files and imported, never
// pulled. make node-e2e runs the tests in e2e/node on it.
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
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/klog/v2"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/e2e/cluster"
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
	// NVML is the plugin's --nvml value, e.g. "mock:dgxh200:1".
	NVML string
	// GPUs is how many GPUs the fake driver root has device nodes for; it
	// must cover the mock's GPUs.
	GPUs int
	// BinDir holds NodeBinaries.
	BinDir string
	// PluginBinary is the dra-kubelet-plugin to run.
	PluginBinary string
	// PluginArgs are the plugin's arguments besides the node's own paths,
	// ports and NVML backend (the chart's, see cluster.ContainerArgs).
	PluginArgs []string
	// Credentials returns the plugin's kubeconfig once the kubelet has
	// registered the node (a token bound to the plugin pod on the node).
	Credentials func(ctx context.Context, nodeName string) (string, error)
	// Layout says where the node keeps everything; logs go to the control
	// plane's log dir.
	Layout Layout
}

// Node is a running real node.
type Node struct {
	Name string
	Layout
	// Host is what CheckHost found.
	Host *Host

	opts       Options
	kubeconfig string
	cp         *cluster.ControlPlane
	containerd *containerd
	kubelet    *kubelet

	mu     sync.Mutex
	plugin *cluster.Process
}

// Start checks the host, then starts containerd (importing the pause and test
// images), the kubelet, and the plugin, and returns once the node is Ready, the
// plugin is registered with the kubelet and its slices are published. On error
// everything started is stopped again.
func Start(ctx context.Context, cp *cluster.ControlPlane, opts Options) (_ *Node, err error) {
	host, err := CheckHost(opts.BinDir)
	if err != nil {
		return nil, err
	}
	if !filepath.IsAbs(opts.Layout.Dir) {
		return nil, fmt.Errorf("node work directory %q is not absolute", opts.Layout.Dir)
	}
	dir := opts.Layout.Dir
	n := &Node{Name: opts.Name, Layout: opts.Layout, Host: host, opts: opts, cp: cp}
	defer func() {
		if err != nil {
			_ = n.Stop(context.WithoutCancel(ctx))
		}
	}()
	for _, d := range []string{n.CDIRoot, n.StateDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("create %s: %w", d, err)
		}
	}
	if err := MakeDriverRoot(n.DriverRoot, n.Driver, opts.GPUs); err != nil {
		return nil, err
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
	if n.kubeconfig, err = opts.Credentials(ctx, opts.Name); err != nil {
		return nil, fmt.Errorf("credentials of the plugin on node %s: %w", opts.Name, err)
	}
	if err := n.StartPlugin(ctx); err != nil {
		return nil, err
	}
	return n, nil
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

// StartPlugin starts the dra-kubelet-plugin the way its DaemonSet runs it, with
// the kubelet's plugin directories, and waits until the kubelet has registered
// it and its pool is published.
func (n *Node) StartPlugin(ctx context.Context) error {
	ports, err := cluster.FreePorts(1)
	if err != nil {
		return err
	}
	// The DaemonSet mounts it with type DirectoryOrCreate; the plugin expects it.
	dataDir := filepath.Join(n.kubelet.PluginsDir(), gpuapi.DriverName)
	if err := os.MkdirAll(dataDir, 0o750); err != nil {
		return fmt.Errorf("create plugin data dir: %w", err)
	}
	args := append([]string{
		"--healthcheck-port=" + strconv.Itoa(ports[0]),
		"--node-name=" + n.Name,
		"--kubeconfig=" + n.kubeconfig,
		"--nvml=" + n.opts.NVML,
		"--plugin-data-dir=" + dataDir,
		"--registrar-dir=" + n.kubelet.PluginRegistryDir(),
		"--cdi-root=" + n.CDIRoot,
		"--state-dir=" + n.StateDir,
		"--driver-root=" + n.DriverRoot,
		"-v=4",
	}, n.opts.PluginArgs...)
	p, err := cluster.StartProcess("dra-kubelet-plugin-"+n.Name, n.cp.LogDir, n.opts.PluginBinary, args, nil)
	if err != nil {
		return err
	}
	n.mu.Lock()
	n.plugin = p
	n.mu.Unlock()
	return n.waitPlugin(ctx, p)
}

// waitPlugin waits until the kubelet reports the plugin's registration socket
// among its registered plugins and the node's pool is complete.
func (n *Node) waitPlugin(ctx context.Context, p *cluster.Process) error {
	socket := filepath.Join(n.kubelet.PluginRegistryDir(), gpuapi.DriverName+"-reg.sock")
	want := fmt.Sprintf(`plugin_manager_total_plugins{socket_path=%q,state="actual_state_of_world"} 1`, socket)
	var last string
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		if exited, err := p.Exited(); exited {
			return false, fmt.Errorf("plugin exited (log: %s): %w", p.LogPath, err)
		}
		metrics, err := n.kubelet.metrics(ctx)
		if err != nil {
			last = err.Error()
			return false, nil
		}
		if !strings.Contains(metrics, want) {
			last = "kubelet has not registered " + socket
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
		return fmt.Errorf("plugin on node %s not ready (last: %s; log: %s): %w", n.Name, last, p.LogPath, err)
	}
	return nil
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

// RestartPlugin stops the plugin (killed, as a crash, when crash is set) and
// starts it again.
func (n *Node) RestartPlugin(ctx context.Context, crash bool) error {
	n.mu.Lock()
	p := n.plugin
	n.mu.Unlock()
	if crash {
		p.Kill()
	} else if err := p.Stop(30 * time.Second); err != nil {
		return err
	}
	return n.StartPlugin(ctx)
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
	n.mu.Lock()
	p := n.plugin
	n.mu.Unlock()
	if err := n.waitPlugin(ctx, p); err != nil {
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

// PluginLog is the path of the plugin's log.
func (n *Node) PluginLog() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.plugin.LogPath
}

// KubeletLog is the path of the kubelet's log.
func (n *Node) KubeletLog() string { return n.kubelet.proc.LogPath }

// Stop stops the plugin and the kubelet, kills every container left, stops
// containerd and unmounts whatever the node mounted under its work directory.
func (n *Node) Stop(ctx context.Context) error {
	var errs []error
	n.mu.Lock()
	p := n.plugin
	n.mu.Unlock()
	if p != nil {
		errs = append(errs, p.Stop(10*time.Second))
	}
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
