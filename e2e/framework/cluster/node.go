package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/klog/v2"

	"github.com/tessera-gpu/tessera/e2e/framework/kubelet"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
)

// NodeOptions describe one simulated GPU node.
type NodeOptions struct {
	Name string
	// NVML is the plugin's --nvml value, e.g. "mock:dgxh200:8".
	NVML string
	// Labels are added to the Node object.
	Labels map[string]string
	// PluginArgs are extra arguments for dra-kubelet-plugin.
	PluginArgs []string
	// Kubeconfig is the plugin's kubeconfig. When empty, Credentials makes one,
	// or the plugin runs as admin.
	Kubeconfig string
	// Credentials returns a kubeconfig for the node's plugin once the node is
	// registered (a token bound to the plugin pod on the node).
	Credentials func(ctx context.Context, nodeName string) (string, error)
}

// Node is a simulated node: a Node object kept Ready by heartbeats, one real
// dra-kubelet-plugin process and a kubelet stand-in.
type Node struct {
	Name string
	// PluginDataDir, RegistrarDir, CDIRoot and StateDir are the plugin's directories.
	PluginDataDir, RegistrarDir, CDIRoot, StateDir string
	Kubelet                                        *kubelet.Kubelet
	// MetricsAddress is where the running plugin serves /metrics.
	MetricsAddress string

	opts      NodeOptions
	cp        *ControlPlane
	pluginBin string
	logDir    string
	cancel    context.CancelFunc
	done      sync.WaitGroup

	mu     sync.Mutex
	plugin *Process
}

// maxSocketPath is the longest path a unix socket address holds on Linux
// (sun_path, less its terminating NUL).
const maxSocketPath = 107

// AddNode registers a node, starts its kubelet stand-in and plugin, and waits until
// the plugin has registered and its ResourceSlices are all published.
func (cp *ControlPlane) AddNode(ctx context.Context, pluginBin, workDir string, opts NodeOptions) (_ *Node, err error) {
	dir := filepath.Join(workDir, "nodes", opts.Name)
	n := &Node{
		Name:          opts.Name,
		PluginDataDir: filepath.Join(dir, "plugin"),
		RegistrarDir:  filepath.Join(dir, "registry"),
		CDIRoot:       filepath.Join(dir, "cdi"),
		StateDir:      filepath.Join(dir, "state"),
		opts:          opts,
		cp:            cp,
		pluginBin:     pluginBin,
		logDir:        cp.LogDir,
	}
	// The plugin's registration socket must fit a unix socket address.
	if sock := filepath.Join(n.RegistrarDir, gpuapi.DriverName+"-reg.sock"); len(sock) > maxSocketPath {
		return nil, fmt.Errorf("node %s: its plugin's socket %s is %d bytes, more than a unix socket address holds (%d): use a shorter TMPDIR or node name",
			opts.Name, sock, len(sock), maxSocketPath)
	}
	for _, d := range []string{n.PluginDataDir, n.RegistrarDir, n.CDIRoot, n.StateDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("create %s: %w", d, err)
		}
	}
	if err := n.register(ctx); err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	n.cancel = cancel
	defer func() {
		if err != nil {
			err = errors.Join(err, n.Stop())
		}
	}()
	n.done.Add(1)
	go func() {
		defer n.done.Done()
		n.heartbeat(runCtx)
	}()
	n.Kubelet = kubelet.New(kubelet.Options{NodeName: opts.Name, Client: cp.Client, RegistrarDir: n.RegistrarDir, CDIRoot: n.CDIRoot})
	if err := n.Kubelet.Run(klog.NewContext(runCtx, klog.FromContext(ctx).WithValues("node", opts.Name))); err != nil {
		return nil, err
	}
	if n.opts.Kubeconfig == "" && n.opts.Credentials != nil {
		if n.opts.Kubeconfig, err = n.opts.Credentials(ctx, n.Name); err != nil {
			return nil, fmt.Errorf("credentials of the plugin on node %s: %w", n.Name, err)
		}
	}
	if err := n.StartPlugin(ctx); err != nil {
		return nil, err
	}
	return n, nil
}

// StartPlugin starts the node's dra-kubelet-plugin and waits until it has registered
// with the kubelet stand-in and published a complete pool.
func (n *Node) StartPlugin(ctx context.Context) error {
	before := n.Kubelet.Registrations(gpuapi.DriverName)
	// Several plugins share this machine's network namespace: each gets its own
	// loopback ports for metrics and health probes.
	ports, err := FreePorts(2)
	if err != nil {
		return err
	}
	n.MetricsAddress = "127.0.0.1:" + strconv.Itoa(ports[0])
	args := append([]string{
		"--metrics-address=" + n.MetricsAddress,
		"--healthcheck-port=" + strconv.Itoa(ports[1]),
		"--healthcheck-address=127.0.0.1",
		"--node-name=" + n.Name,
		"--kubeconfig=" + n.kubeconfig(),
		"--nvml=" + n.opts.NVML,
		"--plugin-data-dir=" + n.PluginDataDir,
		"--registrar-dir=" + n.RegistrarDir,
		"--cdi-root=" + n.CDIRoot,
		"--state-dir=" + n.StateDir,
		"-v=4",
	}, n.opts.PluginArgs...)
	p, err := StartProcess("dra-kubelet-plugin-"+n.Name, n.logDir, n.pluginBin, args, nil)
	if err != nil {
		return err
	}
	n.mu.Lock()
	n.plugin = p
	n.mu.Unlock()

	waitCtx, cancel := context.WithTimeoutCause(ctx, time.Minute, fmt.Errorf("plugin on node %s did not come up within a minute (log: %s)", n.Name, p.LogPath))
	defer cancel()
	go func() {
		select {
		case <-p.Done():
			cancel()
		case <-waitCtx.Done():
		}
	}()
	if _, err := n.Kubelet.WaitForPlugin(waitCtx, gpuapi.DriverName, before+1); err != nil {
		if exited, _ := p.Exited(); exited {
			return exitedError(p)
		}
		return err
	}
	err = wait.PollUntilContextCancel(waitCtx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		complete, err := n.PoolComplete(ctx)
		return err == nil && complete, nil
	})
	if err != nil {
		if exited, _ := p.Exited(); exited {
			return exitedError(p)
		}
		return fmt.Errorf("wait for ResourceSlices of node %s: %w", n.Name, context.Cause(waitCtx))
	}
	return nil
}

func (n *Node) kubeconfig() string {
	if n.opts.Kubeconfig != "" {
		return n.opts.Kubeconfig
	}
	return n.cp.Kubeconfig
}

// Options returns what the node was created with.
func (n *Node) Options() NodeOptions { return n.opts }

// Plugin returns the running plugin process.
func (n *Node) Plugin() *Process {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.plugin
}

// RestartPlugin stops the plugin (gracefully, or killed when crash is set) and starts
// it again, waiting for it to re-register and republish.
func (n *Node) RestartPlugin(ctx context.Context, crash bool) error {
	p := n.Plugin()
	if crash {
		p.Kill()
	} else if err := p.Stop(30 * time.Second); err != nil {
		return err
	}
	return n.StartPlugin(ctx)
}

// Slices lists the node's ResourceSlices of Tessera's driver.
func (n *Node) Slices(ctx context.Context) ([]resourceapi.ResourceSlice, error) {
	list, err := n.cp.Client.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{
		FieldSelector: fields.Set{"spec.nodeName": n.Name, "spec.driver": gpuapi.DriverName}.String(),
	})
	if err != nil {
		return nil, fmt.Errorf("list ResourceSlices of node %s: %w", n.Name, err)
	}
	return list.Items, nil
}

// PoolComplete reports whether every pool of the node has all the slices of its
// newest generation published.
func (n *Node) PoolComplete(ctx context.Context) (bool, error) {
	slices, err := n.Slices(ctx)
	if err != nil {
		return false, err
	}
	if len(slices) == 0 {
		return false, nil
	}
	type poolState struct {
		generation int64
		want, have int64
	}
	pools := map[string]*poolState{}
	for _, s := range slices {
		p := pools[s.Spec.Pool.Name]
		if p == nil || s.Spec.Pool.Generation > p.generation {
			p = &poolState{generation: s.Spec.Pool.Generation, want: s.Spec.Pool.ResourceSliceCount}
			pools[s.Spec.Pool.Name] = p
		}
		if s.Spec.Pool.Generation == p.generation {
			p.have++
		}
	}
	for _, p := range pools {
		if p.have != p.want {
			return false, nil
		}
	}
	return true, nil
}

// Stop stops the plugin, the stand-in and the heartbeats.
func (n *Node) Stop() error {
	var errs []error
	if p := n.Plugin(); p != nil {
		errs = append(errs, p.Stop(10*time.Second))
	}
	if n.cancel != nil {
		n.cancel()
	}
	n.done.Wait()
	return errors.Join(errs...)
}

func (n *Node) register(ctx context.Context) error {
	labels := map[string]string{
		"kubernetes.io/hostname": n.Name,
		"kubernetes.io/os":       "linux",
		"kubernetes.io/arch":     "amd64",
	}
	for k, v := range n.opts.Labels {
		labels[k] = v
	}
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("64"),
		corev1.ResourceMemory: resource.MustParse("1Ti"),
		corev1.ResourcePods:   resource.MustParse("110"),
	}
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: labels},
		Status: corev1.NodeStatus{
			Capacity:    capacity,
			Allocatable: capacity,
			Addresses: []corev1.NodeAddress{
				{Type: corev1.NodeInternalIP, Address: "127.0.0.1"},
				{Type: corev1.NodeHostName, Address: n.Name},
			},
			NodeInfo: corev1.NodeSystemInfo{
				KubeletVersion: "v1.37.2", OperatingSystem: "linux", Architecture: "amd64",
				ContainerRuntimeVersion: "tessera-e2e://0",
			},
			Conditions: nodeConditions(metav1.Now()),
		},
	}
	if _, err := n.cp.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create node %s: %w", n.Name, err)
	}
	return n.renew(ctx)
}

func nodeConditions(now metav1.Time) []corev1.NodeCondition {
	cond := func(t corev1.NodeConditionType, s corev1.ConditionStatus, reason string) corev1.NodeCondition {
		return corev1.NodeCondition{Type: t, Status: s, Reason: reason, LastHeartbeatTime: now, LastTransitionTime: now}
	}
	return []corev1.NodeCondition{
		cond(corev1.NodeReady, corev1.ConditionTrue, "KubeletReady"),
		cond(corev1.NodeMemoryPressure, corev1.ConditionFalse, "KubeletHasSufficientMemory"),
		cond(corev1.NodeDiskPressure, corev1.ConditionFalse, "KubeletHasNoDiskPressure"),
		cond(corev1.NodePIDPressure, corev1.ConditionFalse, "KubeletHasSufficientPID"),
	}
}

// heartbeat keeps the node Ready the way kubelet does: renew its Lease often, and
// refresh the Ready condition well within the node-monitor grace period.
func (n *Node) heartbeat(ctx context.Context) {
	logger := klog.FromContext(ctx)
	ticker := time.NewTicker(10 * time.Second)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		if err := n.renew(ctx); err != nil && ctx.Err() == nil {
			logger.Error(err, "Node heartbeat failed", "node", n.Name)
		}
	}
}

func (n *Node) renew(ctx context.Context) error {
	now := metav1.NowMicro()
	leases := n.cp.Client.CoordinationV1().Leases(corev1.NamespaceNodeLease)
	lease, err := leases.Get(ctx, n.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		_, err = leases.Create(ctx, &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: n.Name},
			Spec: coordinationv1.LeaseSpec{
				HolderIdentity: &n.Name, LeaseDurationSeconds: new(int32(40)), RenewTime: &now,
			},
		}, metav1.CreateOptions{})
	case err == nil:
		lease.Spec.RenewTime = &now
		_, err = leases.Update(ctx, lease, metav1.UpdateOptions{})
	}
	if err != nil {
		return fmt.Errorf("renew lease of node %s: %w", n.Name, err)
	}
	// A strategic-merge patch of the conditions (merged by type) never conflicts
	// with the node controllers writing the same object.
	patch, err := json.Marshal(map[string]any{"status": map[string]any{"conditions": nodeConditions(metav1.Time(now))}})
	if err != nil {
		return fmt.Errorf("encode heartbeat of node %s: %w", n.Name, err)
	}
	if _, err := n.cp.Client.CoreV1().Nodes().Patch(ctx, n.Name, types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status"); err != nil {
		return fmt.Errorf("update status of node %s: %w", n.Name, err)
	}
	return nil
}
