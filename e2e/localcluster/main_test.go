// Package localcluster is Tessera's end-to-end suite. It runs on a local cluster (real
// kube-apiserver, kube-scheduler and kube-controller-manager, simulated nodes with
// real dra-kubelet-plugin processes) and only when TESSERA_E2E=1, which make e2e
// sets after building what it needs; a plain go test ./... compiles it and skips.
package localcluster

import (
	"context"
	"flag"
	"fmt"
	"os"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/tessera-gpu/tessera/e2e/framework/cluster"
	"github.com/tessera-gpu/tessera/e2e/framework/clustertest"
)

// The suite's cluster: two 8-GPU H200 nodes, a 1-GPU node kept for the tests
// that need a GPU with nowhere else to go, and a 1-GPU node for the tests of
// withdrawal (both 1-GPU nodes tainted, so other tests' pods stay off), and
// the tenancy nodes (tenancy_setup_test.go). Every plugin withdraws blocked
// devices, the default, but the first 1-GPU node's, which publishes every
// device at all times (--withdraw-blocked=false), so that the co-location test
// sees a MIG claim kept off a shared GPU by counters alone.
const (
	nodeA        = "gpu-node-a"
	nodeB        = "gpu-node-b"
	nodeSmall    = "gpu-node-small"
	nodeWithdraw = "gpu-node-withdraw"

	smallTaintKey = "e2e.tessera.dev/small"
)

var local *cluster.Local

func TestMain(m *testing.M) {
	flag.Parse()
	// Tests and the demo use controller-runtime clients; without a logger
	// controller-runtime prints a stack trace at their first log call.
	ctrllog.SetLogger(klog.Background())
	if os.Getenv("TESSERA_E2E") != "1" {
		fmt.Println("e2e suite skipped: set TESSERA_E2E=1 or run make e2e")
		os.Exit(m.Run())
	}
	os.Exit(run(m))
}

func run(m *testing.M) (code int) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	workDir, err := os.MkdirTemp("", "tessera-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	started := time.Now()
	local, err = cluster.StartLocal(ctx, cluster.Config{
		BinDir:       clustertest.EnvOr("TESSERA_BIN_DIR", cluster.DefaultBinDir()),
		PluginBinary: cluster.DefaultPluginBinary(),
		Helm:         cluster.DefaultHelm(),
		WorkDir:      workDir,
		// The chart gives the plugins their idle-report Lease only where the
		// controller marks idle claims; an hour marks none during the suite,
		// and TestIdleClaimsMarkedAndReclaimedOnlyByOptIn restarts the
		// controller with seconds.
		ChartValues: []string{"controller.idleAfter=1h"},
		Nodes: []cluster.NodeOptions{
			{Name: nodeA, NVML: "mock:dgxh200:8"},
			{Name: nodeB, NVML: "mock:dgxh200:8"},
			{Name: nodeSmall, NVML: "mock:dgxh200:1", Labels: map[string]string{smallTaintKey: "true"}, PluginArgs: []string{"--withdraw-blocked=false"}},
			{Name: nodeWithdraw, NVML: "mock:dgxh200:1", Labels: map[string]string{smallTaintKey: "true"}},
			tenancyNode, poolNode, kindsNode,
		},
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "start local cluster: %v\nlogs in %s\n", err, workDir+"/logs")
		return 1
	}
	defer func() { fmt.Fprint(os.Stderr, clustertest.Finish(workDir, &code, local.Stop)) }()
	for _, n := range []string{nodeSmall, nodeWithdraw} {
		if err := taintNode(ctx, n); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	if err := setUpTenancy(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "set up tenancy:", err)
		return 1
	}
	if bin := os.Getenv(cluster.TesseraSchedulerEnv); bin != "" {
		if err := local.StartTesseraScheduler(ctx, bin); err != nil {
			fmt.Fprintln(os.Stderr, "start tessera-scheduler:", err)
			return 1
		}
	}
	fmt.Printf("local cluster up in %s (kubeconfig %s)\n", time.Since(started).Round(100*time.Millisecond), local.Kubeconfig)

	code = m.Run()
	if cluster.JudgeRestarts(os.Stderr, local.Restarts()) && code == 0 {
		code = 1
	}
	if code != 0 {
		local.TailLogs(os.Stderr, 40)
	}
	return code
}

// needCluster skips a test when the suite runs without a cluster.
func needCluster(t *testing.T) {
	t.Helper()
	if local == nil {
		t.Skip("no local cluster: set TESSERA_E2E=1 or run make e2e")
	}
}

// taintNode keeps pods that do not ask for node off it.
func taintNode(ctx context.Context, name string) error {
	node, err := local.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("get node %s: %w", name, err)
	}
	node.Spec.Taints = append(node.Spec.Taints, corev1.Taint{Key: smallTaintKey, Value: "true", Effect: corev1.TaintEffectNoSchedule})
	if _, err := local.Client.CoreV1().Nodes().Update(ctx, node, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("taint node %s: %w", name, err)
	}
	return nil
}
