// Package demo runs the local cluster for people: make dev-cluster (a cluster with
// Tessera installed) and make demo (the same, plus sample workloads and a table of
// what they got).
package demo

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/klog/v2"

	"github.com/tessera-gpu/tessera/demo/manifests"
	"github.com/tessera-gpu/tessera/e2e/framework/cluster"
)

// The cluster tessera-local starts (make demo, make dev-cluster) unless told
// otherwise: DefaultNodes nodes, each with DefaultNVML's GPUs.
const (
	DefaultNodes = 2
	DefaultNVML  = "mock:dgxh200:8"
)

// Options configure a demo or dev cluster.
type Options struct {
	BinDir       string
	PluginBinary string
	// ControllerBinary is the tenancy controller; nodes run with --tenancy.
	ControllerBinary string
	// Helm renders Tessera's chart (see cluster.DefaultHelm).
	Helm string
	// WorkDir keeps the cluster's state; a temporary directory when empty.
	WorkDir string
	// Nodes and NVML size the cluster: Nodes nodes, each with the NVML mock given.
	Nodes int
	NVML  string
	Out   io.Writer
	// TesseraScheduler, when set, is a tessera-scheduler binary to run as a
	// second scheduler (schedulerName cluster.TesseraSchedulerName).
	TesseraScheduler string
	// Kubectl is the kubectl the demo's hints name (make demo builds one at the
	// cluster's version into bin/kubectl); "kubectl" when empty.
	Kubectl string
}

// start brings up a cluster with Tessera installed. The returned stop tears it
// down and reports what failed doing so.
func start(ctx context.Context, opts Options) (*cluster.Local, func() error, error) {
	removeWorkDir := false
	if opts.WorkDir == "" {
		dir, err := os.MkdirTemp("", "tessera-local-")
		if err != nil {
			return nil, nil, err
		}
		opts.WorkDir = dir
		removeWorkDir = true
	}
	cfg := cluster.Config{BinDir: opts.BinDir, PluginBinary: opts.PluginBinary, Helm: opts.Helm, WorkDir: opts.WorkDir}
	for i := range opts.Nodes {
		cfg.Nodes = append(cfg.Nodes, cluster.NodeOptions{Name: fmt.Sprintf("gpu-node-%d", i+1), NVML: opts.NVML, PluginArgs: []string{"--tenancy"}})
	}
	if _, err := fmt.Fprintf(opts.Out, "Starting a local cluster: %d nodes (%s), state and logs in %s\n", opts.Nodes, opts.NVML, opts.WorkDir); err != nil {
		return nil, nil, fmt.Errorf("write progress: %w", err)
	}
	l, err := cluster.StartLocal(ctx, cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("%w (logs in %s)", err, filepath.Join(opts.WorkDir, "logs"))
	}
	stop := func() error {
		_, werr := fmt.Fprintln(opts.Out, "Stopping the local cluster")
		errs := []error{werr}
		if err := l.Stop(); err != nil {
			errs = append(errs, fmt.Errorf("stop the local cluster: %w", err))
		}
		if removeWorkDir {
			errs = append(errs, os.RemoveAll(opts.WorkDir))
		}
		return errors.Join(errs...)
	}
	if opts.ControllerBinary == "" {
		opts.ControllerBinary = cluster.DefaultControllerBinary()
	}
	if _, err := l.InstallTenancy(ctx, opts.ControllerBinary); err != nil {
		return nil, nil, errors.Join(fmt.Errorf("install tenancy: %w", err), stop())
	}
	if opts.TesseraScheduler != "" {
		if err := l.StartTesseraScheduler(ctx, opts.TesseraScheduler); err != nil {
			return nil, nil, errors.Join(err, stop())
		}
	}
	return l, stop, nil
}

// DevCluster starts the cluster and prints "ready kubeconfig=<path>" once it is up,
// then runs until ctx ends.
func DevCluster(ctx context.Context, opts Options) (err error) {
	opts.Out = orDiscard(opts.Out)
	l, stop, err := start(ctx, Options{BinDir: opts.BinDir, PluginBinary: opts.PluginBinary, ControllerBinary: opts.ControllerBinary, Helm: opts.Helm, WorkDir: opts.WorkDir, Nodes: opts.Nodes, NVML: opts.NVML, Out: io.Discard, TesseraScheduler: opts.TesseraScheduler})
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, stop()) }()
	// Whoever started us waits for this line; if it cannot be written, nobody
	// will use the cluster.
	if _, err := fmt.Fprintf(opts.Out, "ready kubeconfig=%s\n", l.Kubeconfig); err != nil {
		return fmt.Errorf("announce the cluster: %w", err)
	}
	<-ctx.Done()
	return nil
}

// Demo starts the cluster, runs the sample workloads, prints what they got and
// then runs until ctx ends.
func Demo(ctx context.Context, opts Options) (err error) {
	opts.Out = orDiscard(opts.Out)
	started := time.Now()
	l, stop, err := start(ctx, opts)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, stop()) }()
	out := &progress{w: opts.Out}
	out.printf("Cluster up in %s; Tessera installed from its Helm chart\n", time.Since(started).Round(time.Second))

	docs, err := manifests.Demo()
	if err != nil {
		return err
	}
	for _, doc := range docs {
		if err := l.Apply(ctx, doc, manifests.DemoNamespace); err != nil {
			return fmt.Errorf("apply demo workloads: %w", err)
		}
	}
	out.printf("Demo workloads applied (demo/manifests/demo); waiting for them to settle ...\n")
	if err := waitSettled(ctx, l, manifests.DemoNamespace, 2*time.Minute); err != nil {
		out.printf("warning: %v\n", err)
	}
	rows, err := Rows(ctx, l.Client, manifests.DemoNamespace)
	if err != nil {
		return err
	}
	out.printf("\n")
	if out.err == nil {
		out.err = PrintTable(opts.Out, rows)
	}
	if err := tenancyDemo(ctx, l, opts.Out); err != nil {
		return err
	}
	kubectl := cmp.Or(opts.Kubectl, "kubectl")
	out.printf("\nThe cluster keeps running. Try:\n  export KUBECONFIG=%s\n  %s get resourceslices,resourceclaims,pods -A\n  %s get gput\nLogs: %s\nPress Ctrl-C to stop.\n",
		l.Kubeconfig, kubectl, kubectl, filepath.Join(l.WorkDir, "logs"))
	if out.err != nil {
		return fmt.Errorf("write the demo's report: %w", out.err)
	}
	<-ctx.Done()
	return nil
}

// progress writes the demo's messages to the user and keeps the first write
// error, so that a closed terminal ends the demo instead of going unnoticed.
type progress struct {
	w   io.Writer
	err error
}

func (p *progress) printf(format string, args ...any) {
	if p.err == nil {
		_, p.err = fmt.Fprintf(p.w, format, args...)
	}
}

// waitSettled waits until every pod in namespace is Running, or was refused by the
// scheduler or by prepare (a warning event), so the table shows a final state.
func waitSettled(ctx context.Context, l *cluster.Local, namespace string, timeout time.Duration) error {
	logger := klog.FromContext(ctx)
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		pods, err := l.Client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		for _, pod := range pods.Items {
			if pod.Status.Phase == corev1.PodRunning {
				continue
			}
			events, err := l.Client.CoreV1().Events(namespace).List(ctx, metav1.ListOptions{
				FieldSelector: fields.Set{"involvedObject.uid": string(pod.UID), "type": corev1.EventTypeWarning}.String(),
			})
			if err != nil || len(events.Items) == 0 {
				logger.V(2).Info("Waiting for pod", "pod", klog.KObj(&pod), "phase", pod.Status.Phase)
				return false, nil
			}
		}
		return len(pods.Items) > 0, nil
	})
	if err != nil {
		return fmt.Errorf("demo pods not settled within %s", timeout)
	}
	return nil
}

func orDiscard(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}
