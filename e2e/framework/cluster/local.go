package cluster

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
	"k8s.io/klog/v2"
)

// Config describes a local cluster: a control plane and simulated GPU nodes.
type Config struct {
	// BinDir holds the control-plane binaries (see DefaultBinDir).
	BinDir string
	// PluginBinary is the dra-kubelet-plugin to run on every node.
	PluginBinary string
	// WorkDir receives all state and logs.
	WorkDir string
	Nodes   []NodeOptions
	// Helm is the Helm CLI that renders Tessera's chart (see DefaultHelm).
	Helm string
	// ChartValues are --set values on top of the local cluster's own.
	ChartValues []string
}

// localValues adapt the chart to the local cluster: its simulated nodes carry
// test taints the plugin must tolerate.
var localValues = []string{
	"kubeletPlugin.tolerations[0].operator=Exists",
	// The chart installs the tenancy objects and the controller's Deployment;
	// the suite and the demo run the controller process (InstallTenancy) and
	// turn on binding conditions only on the nodes that test tenancy.
	"kubeletPlugin.tenancy=false",
}

// Local is a running local cluster.
type Local struct {
	*ControlPlane
	WorkDir string
	Nodes   []*Node
	// Install is Tessera as the chart installed it.
	Install *Install
}

// StartLocal starts the control plane and then the nodes, in parallel.
func StartLocal(ctx context.Context, cfg Config) (_ *Local, err error) {
	if _, err := os.Stat(cfg.PluginBinary); err != nil {
		return nil, fmt.Errorf("plugin binary: %w (build it with make build or go build -o bin/dra-kubelet-plugin ./cmd/dra-kubelet-plugin)", err)
	}
	cp, err := Start(ctx, Options{BinDir: cfg.BinDir, WorkDir: cfg.WorkDir})
	if err != nil {
		return nil, err
	}
	l := &Local{ControlPlane: cp, WorkDir: cfg.WorkDir}
	defer func() {
		if err != nil {
			err = errors.Join(err, l.Stop())
		}
	}()
	l.Install, err = l.InstallChart(ctx, cfg.Helm, append(slices.Clone(localValues), cfg.ChartValues...))
	if err != nil {
		return nil, err
	}
	// Each plugin runs with the chart's arguments, less the host paths and
	// ports that the node replaces with its own. host-proc goes too: the
	// chart mounts the host's /proc into the plugin's PID namespace, and a
	// local plugin runs in the host's, where NVML's PIDs are its own.
	pluginArgs := ContainerArgs(l.Install.Plugin.Spec.Template.Spec,
		"nvml", "plugin-data-dir", "registrar-dir", "cdi-root", "state-dir", "driver-root", "container-driver-root", "host-proc", "metrics-address", "healthcheck-port", "healthcheck-address", "v")
	nodes := make([]*Node, len(cfg.Nodes))
	errs := make([]error, len(cfg.Nodes))
	done := make(chan int)
	for i, opts := range cfg.Nodes {
		opts.PluginArgs = append(slices.Clone(pluginArgs), opts.PluginArgs...)
		if opts.Kubeconfig == "" {
			opts.Credentials = l.pluginCredentials
		}
		go func() {
			nodes[i], errs[i] = cp.AddNode(ctx, cfg.PluginBinary, cfg.WorkDir, opts)
			done <- i
		}()
	}
	for range cfg.Nodes {
		<-done
	}
	for _, n := range nodes {
		if n != nil {
			l.Nodes = append(l.Nodes, n)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	klog.FromContext(ctx).V(1).Info("Local cluster ready", "nodes", len(l.Nodes), "kubeconfig", cp.Kubeconfig)
	return l, nil
}

// pluginCredentials gives the plugin of nodeName a token bound to the chart's
// plugin pod on that node, as the kubelet gives the real DaemonSet pod.
func (l *Local) pluginCredentials(ctx context.Context, nodeName string) (string, error) {
	pod, err := l.PodOn(ctx, l.Install.Plugin.Spec.Selector, nodeName)
	if err != nil {
		return "", err
	}
	return l.PodKubeconfig(ctx, pod, "kubelet-plugin-"+nodeName)
}

// Node returns the node called name, or nil.
func (l *Local) Node(name string) *Node {
	for _, n := range l.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// Stop stops the nodes and then the control plane.
func (l *Local) Stop() error {
	var errs []error
	for _, n := range l.Nodes {
		errs = append(errs, n.Stop())
	}
	errs = append(errs, l.ControlPlane.Stop())
	return errors.Join(errs...)
}

// Apply server-side-applies every object of a multi-document YAML stream, in order.
// Namespaced objects without a namespace go into namespace (if not empty).
func (l *Local) Apply(ctx context.Context, manifests []byte, namespace string) error {
	dyn, err := dynamic.NewForConfig(l.Config)
	if err != nil {
		return fmt.Errorf("create dynamic client: %w", err)
	}
	disc, err := discovery.NewDiscoveryClientForConfig(l.Config)
	if err != nil {
		return fmt.Errorf("create discovery client: %w", err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(disc))
	reader := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(manifests)))
	for {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read manifest: %w", err)
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		obj := &unstructured.Unstructured{}
		if err := utilyaml.Unmarshal(doc, &obj.Object); err != nil {
			return fmt.Errorf("decode manifest: %w", err)
		}
		if len(obj.Object) == 0 {
			continue
		}
		gvk := obj.GroupVersionKind()
		var mapping *meta.RESTMapping
		// A CRD applied earlier in the stream becomes known to discovery only
		// after a moment; retry the mapping briefly.
		err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
			var err error
			mapping, err = mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
			if err != nil {
				mapper.Reset()
				return false, nil
			}
			return true, nil
		})
		if err != nil {
			return fmt.Errorf("find resource for %s: %w", gvk, err)
		}
		var res dynamic.ResourceInterface = dyn.Resource(mapping.Resource)
		if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
			ns := obj.GetNamespace()
			if ns == "" {
				ns = namespace
				obj.SetNamespace(ns)
			}
			res = dyn.Resource(mapping.Resource).Namespace(ns)
		}
		if _, err := res.Apply(ctx, obj.GetName(), obj, metav1.ApplyOptions{FieldManager: "tessera-local", Force: true}); err != nil {
			return fmt.Errorf("apply %s %s: %w", gvk.Kind, obj.GetName(), err)
		}
	}
}

// RepoRoot finds the root of the Tessera repository from the working directory up.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.HasPrefix(string(data), "module github.com/tessera-gpu/tessera\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("not inside the Tessera repository (no go.mod of github.com/tessera-gpu/tessera above the working directory)")
		}
		dir = parent
	}
}

// DefaultPluginBinary is $TESSERA_PLUGIN_BINARY, or bin/dra-kubelet-plugin in the
// repository.
func DefaultPluginBinary() string {
	if p := os.Getenv("TESSERA_PLUGIN_BINARY"); p != "" {
		return p
	}
	root, err := RepoRoot()
	if err != nil {
		return filepath.Join("bin", "dra-kubelet-plugin")
	}
	return filepath.Join(root, "bin", "dra-kubelet-plugin")
}

// TailLogs writes the last lines of every component log to w, for a failed run.
func (cp *ControlPlane) TailLogs(w io.Writer, lines int) {
	entries, err := os.ReadDir(cp.LogDir)
	if err != nil {
		return
	}
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(cp.LogDir, e.Name()))
		if err != nil {
			continue
		}
		all := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(all) > lines {
			all = all[len(all)-lines:]
		}
		if _, err := fmt.Fprintf(w, "==== %s (last %d lines) ====\n%s\n", filepath.Join(cp.LogDir, e.Name()), len(all), strings.Join(all, "\n")); err != nil {
			return
		}
	}
}
