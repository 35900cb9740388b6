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
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/klog/v2"

	"github.com/tessera-gpu/tessera/e2e/manifests"
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
}

// Local is a running local cluster.
type Local struct {
	*ControlPlane
	WorkDir string
	Nodes   []*Node
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
	pluginKubeconfig, err := l.pluginKubeconfig(ctx)
	if err != nil {
		return nil, err
	}
	nodes := make([]*Node, len(cfg.Nodes))
	errs := make([]error, len(cfg.Nodes))
	done := make(chan int)
	for i, opts := range cfg.Nodes {
		if opts.Kubeconfig == "" {
			opts.Kubeconfig = pluginKubeconfig
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

// pluginKubeconfig installs the plugin's ServiceAccount and RBAC and writes a
// kubeconfig with a token of that account, so the plugins run with the rights a
// deployment gives them rather than as cluster admin.
func (l *Local) pluginKubeconfig(ctx context.Context) (string, error) {
	if err := l.Apply(ctx, manifests.PluginRBAC, ""); err != nil {
		return "", fmt.Errorf("install plugin RBAC: %w", err)
	}
	ns, name := manifests.PluginServiceAccount[0], manifests.PluginServiceAccount[1]
	var token *authenticationv1.TokenRequest
	// The token controller needs the account in its informer first.
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		var err error
		token, err = l.Client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name, &authenticationv1.TokenRequest{
			Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: new(int64(7 * 24 * 3600))},
		}, metav1.CreateOptions{})
		return err == nil, nil
	})
	if err != nil {
		return "", fmt.Errorf("create token for service account %s/%s: %w", ns, name, err)
	}
	path := filepath.Join(l.WorkDir, "kubelet-plugin.kubeconfig")
	if err := writeKubeconfig(path, l.APIServerURL, l.Config.CAFile, "kubelet-plugin",
		&clientcmdapi.AuthInfo{Token: token.Status.Token}); err != nil {
		return "", err
	}
	return path, nil
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
