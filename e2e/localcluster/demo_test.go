package localcluster

import (
	"context"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/tessera-gpu/tessera/demo"
	"github.com/tessera-gpu/tessera/demo/manifests"
	"github.com/tessera-gpu/tessera/e2e/framework/cluster"
	"github.com/tessera-gpu/tessera/e2e/framework/clustertest"
)

// demoReady is the demo's last line before it waits for Ctrl-C.
const demoReady = "Press Ctrl-C to stop."

// TestDemoDoesWhatTheReadmeSays runs what make demo runs (tessera-local demo:
// its own cluster, of the command's default size) and reads what it prints as
// a newcomer would: every sample pod runs with a device, the tenancy part
// shows a refusal and a budget holding a pod back, the kubeconfig the hints
// export reaches the cluster, and Ctrl-C (the context's end) stops everything
// and removes the cluster's state.
func TestDemoDoesWhatTheReadmeSays(t *testing.T) {
	needCluster(t)
	ctx, cancel := context.WithTimeout(t.Context(), 6*time.Minute)
	defer cancel()
	out, stop := runUntil(ctx, t, demo.Demo, demo.Options{Nodes: demo.DefaultNodes, NVML: demo.DefaultNVML}, demoReady)
	printed := out.String()
	t.Logf("the demo printed:\n%s", printed)

	stateDir := after(t, printed, "state and logs in ")
	kubeconfig := after(t, printed, "export KUBECONFIG=")
	config, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatalf("the kubeconfig the demo tells users to export: %v", err)
	}
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		t.Fatal(err)
	}
	pods, err := client.CoreV1().Pods(manifests.DemoNamespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("list the demo's pods with the exported kubeconfig: %v", err)
	}
	if len(pods.Items) == 0 {
		t.Fatalf("no pods in %s", manifests.DemoNamespace)
	}
	if strings.Contains(printed, "warning:") {
		t.Errorf("the demo warned")
	}
	for _, pod := range pods.Items {
		if pod.Status.Phase != corev1.PodRunning {
			t.Errorf("demo pod %s is %s", pod.Name, pod.Status.Phase)
		}
		// The table has a row per device of the pod; the pod's containers
		// got device nodes ("dev nvidiaN").
		if !hasLine(printed, " "+pod.Name+" ", "dev nvidia") {
			t.Errorf("no table row shows pod %s with a device", pod.Name)
		}
	}
	for _, want := range []string{
		"NODE", "CONTAINER GOT", // the table's header
		"is forbidden", "may not use", // team-a's refused claim
		"is over budget", // team-b's second pod held back
		"team-a", "team-b", "BUDGET EXHAUSTED",
	} {
		if !strings.Contains(printed, want) {
			t.Errorf("the demo did not print %q", want)
		}
	}

	if err := stop(); err != nil {
		t.Errorf("the demo stopped with: %v", err)
	}
	if _, err := os.Stat(stateDir); !os.IsNotExist(err) {
		t.Errorf("the demo left its state in %s (stat: %v)", stateDir, err)
	}
	if !strings.HasSuffix(strings.TrimSpace(out.String()), "Stopping the local cluster") {
		t.Errorf("the demo did not say it stopped the cluster:\n%s", out)
	}
}

// TestDevClusterAnnouncesItsKubeconfig runs what make dev-cluster runs: it
// prints "ready kubeconfig=<path>" once Tessera is installed, that kubeconfig
// sees the chart's DeviceClasses and both nodes' slices, and the context's end
// stops the cluster.
func TestDevClusterAnnouncesItsKubeconfig(t *testing.T) {
	needCluster(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	opts := demo.Options{WorkDir: t.TempDir(), Nodes: 2, NVML: "mock:dgxh200:1"}
	out, stop := runUntil(ctx, t, demo.DevCluster, opts, "ready kubeconfig=")
	config, err := clientcmd.BuildConfigFromFlags("", after(t, out.String(), "ready kubeconfig="))
	if err != nil {
		t.Fatalf("the announced kubeconfig: %v", err)
	}
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		t.Fatal(err)
	}
	classes, err := client.ResourceV1().DeviceClasses().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Errorf("list DeviceClasses through the announced kubeconfig: %v", err)
	} else if len(classes.Items) == 0 {
		t.Errorf("no DeviceClasses through the announced kubeconfig")
	}
	// The plugins publish their slices once running; both nodes' pools come.
	err = wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		slices, err := client.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		nodes := map[string]bool{}
		for _, s := range slices.Items {
			if s.Spec.NodeName != nil {
				nodes[*s.Spec.NodeName] = true
			}
		}
		return len(nodes) == 2, nil
	})
	if err != nil {
		t.Errorf("the slices of both nodes did not come: %v", err)
	}
	if err := stop(); err != nil {
		t.Errorf("the dev cluster stopped with: %v", err)
	}
}

// runUntil runs run (demo.Demo or demo.DevCluster) on the suite's binaries with
// opts until it has printed marker, and returns what it prints and a stop that
// ends it (as Ctrl-C does) and returns its error. Both stop their cluster only
// when their context ends, so a test that fails early still waits for that in
// a cleanup, and no component outlives the suite.
func runUntil(ctx context.Context, t *testing.T, run func(context.Context, demo.Options) error, opts demo.Options, marker string) (*watchedOutput, func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	out := newWatchedOutput(marker)
	opts.BinDir = clustertest.EnvOr("TESSERA_BIN_DIR", cluster.DefaultBinDir())
	opts.PluginBinary = cluster.DefaultPluginBinary()
	opts.Helm = cluster.DefaultHelm()
	opts.Out = out
	stopped := make(chan struct{})
	var runErr error
	go func() {
		defer close(stopped)
		runErr = run(ctx, opts)
	}()
	stop := func() error {
		cancel()
		<-stopped
		return runErr
	}
	t.Cleanup(func() { _ = stop() })
	select {
	case <-out.seen:
	case <-stopped:
		t.Fatalf("ended before it printed %q: %v\n%s", marker, runErr, out)
	case <-ctx.Done():
		t.Fatalf("did not print %q in time:\n%s", marker, out)
	}
	return out, stop
}

// after returns the rest of the first line of printed that contains prefix,
// after the prefix.
func after(t *testing.T, printed, prefix string) string {
	t.Helper()
	for line := range strings.Lines(printed) {
		if _, rest, ok := strings.Cut(line, prefix); ok {
			return strings.TrimSpace(rest)
		}
	}
	t.Fatalf("did not print %q", prefix)
	return ""
}

// hasLine reports whether a line of printed contains all of parts.
func hasLine(printed string, parts ...string) bool {
	for line := range strings.Lines(printed) {
		found := true
		for _, p := range parts {
			found = found && strings.Contains(line, p)
		}
		if found {
			return true
		}
	}
	return false
}

// watchedOutput collects what the demo writes and closes seen once it has
// written marker.
type watchedOutput struct {
	marker string
	seen   chan struct{}

	mu   sync.Mutex
	buf  strings.Builder
	once sync.Once
}

func newWatchedOutput(marker string) *watchedOutput {
	return &watchedOutput{marker: marker, seen: make(chan struct{})}
}

func (w *watchedOutput) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if strings.Contains(w.buf.String(), w.marker) {
		w.once.Do(func() { close(w.seen) })
	}
	return len(p), nil
}

func (w *watchedOutput) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}
