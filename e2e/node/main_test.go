// Package node is Tessera's end-to-end suite on a real node: the local control
// plane (e2e/cluster) plus a real kubelet, containerd with CDI and runc, and the
// real dra-kubelet-plugin on mock NVML with a fake driver root of real device
// nodes (e2e/realnode). Commands run inside the containers show what the
// runtime really gave them. It runs only when TESSERA_NODE_E2E=1, which make
// node-e2e sets after building what it needs and checking the host; it needs
// root (docs/node-e2e.md). A plain go test ./... (or make e2e) compiles it and
// skips.
package node

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tessera-gpu/tessera/e2e/cluster"
	"github.com/tessera-gpu/tessera/e2e/clustertest"
	"github.com/tessera-gpu/tessera/e2e/realnode"
)

// nodeName is the real node; its mock has one H200, so that every test's GPU
// is GPU 0 and the tests run one after another.
const nodeName = realnode.NodeName

var (
	local *cluster.Local
	node  *realnode.Node
)

func TestMain(m *testing.M) {
	flag.Parse()
	if os.Getenv("TESSERA_NODE_E2E") != "1" {
		fmt.Println("real-node e2e suite skipped: set TESSERA_NODE_E2E=1 or run make node-e2e (as root)")
		os.Exit(m.Run())
	}
	os.Exit(run(m))
}

func run(m *testing.M) (code int) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	binDir := clustertest.EnvOr("TESSERA_NODE_BIN_DIR", realnode.DefaultBinDir())
	// Checked before the control plane starts, so that a host that cannot run a
	// node says why within a second.
	if _, err := realnode.CheckHost(binDir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	workDir, err := os.MkdirTemp("", "tessera-node-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	started := time.Now()
	layout := realnode.NewLayout(filepath.Join(workDir, "nodes", nodeName), realnode.DriverLayouts[realnode.DefaultDriverLayout])
	local, err = cluster.StartLocal(ctx, cluster.Config{
		BinDir:       clustertest.EnvOr("TESSERA_BIN_DIR", cluster.DefaultBinDir()),
		PluginBinary: cluster.DefaultPluginBinary(),
		WorkDir:      workDir,
		Helm:         cluster.DefaultHelm(),
		ChartValues:  layout.ChartValues(),
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "start local control plane: %v\nlogs in %s\n", err, filepath.Join(workDir, "logs"))
		return 1
	}
	defer func() {
		var stops []func() error
		if node != nil {
			stops = append(stops, func() error { return node.Stop(context.Background()) })
		}
		fmt.Fprint(os.Stderr, clustertest.Finish(workDir, &code, append(stops, local.Stop)...))
	}()
	node, err = realnode.Start(ctx, local.ControlPlane, realnode.Options{
		Name:         nodeName,
		NVML:         "mock:dgxh200:1",
		GPUs:         1,
		BinDir:       binDir,
		PluginBinary: cluster.DefaultPluginBinary(),
		// The chart's plugin arguments, less what the node sets itself.
		PluginArgs: cluster.ContainerArgs(local.Install.Plugin.Spec.Template.Spec,
			"nvml", "plugin-data-dir", "registrar-dir", "cdi-root", "state-dir", "driver-root", "container-driver-root", "metrics-address", "healthcheck-port", "v"),
		Credentials: func(ctx context.Context, name string) (string, error) {
			pod, err := local.PodOn(ctx, local.Install.Plugin.Spec.Selector, name)
			if err != nil {
				return "", err
			}
			return local.PodKubeconfig(ctx, pod, "kubelet-plugin-"+name)
		},
		Layout: layout,
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "start real node: %v\n", err)
		local.TailLogs(os.Stderr, 40)
		return 1
	}
	fmt.Printf("control plane and real node up in %s (kubeconfig %s)\n", time.Since(started).Round(100*time.Millisecond), local.Kubeconfig)

	code = m.Run()
	if code != 0 {
		local.TailLogs(os.Stderr, 40)
	}
	return code
}

// needNode skips a test when the suite runs without a node.
func needNode(t *testing.T) {
	t.Helper()
	if node == nil {
		t.Skip("no real node: set TESSERA_NODE_E2E=1 or run make node-e2e (as root)")
	}
}
