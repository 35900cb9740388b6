// Package node is Tessera's end-to-end suite on a real node: the local control
// plane (e2e/framework/cluster) plus a real kubelet, containerd with CDI and runc, and a
// fake driver root laid out like a real install (e2e/framework/realnode), on which
// Tessera runs as a user installs it: its image imported into containerd, its
// chart installed with the Helm CLI, its plugin the chart's DaemonSet pod on
// mock NVML. Commands run inside the containers show what the
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
	"strconv"
	"testing"
	"time"

	"github.com/tessera-gpu/tessera/e2e/framework/cluster"
	"github.com/tessera-gpu/tessera/e2e/framework/clustertest"
	"github.com/tessera-gpu/tessera/e2e/framework/realnode"
)

// nodeName is the real node; its mock has one H200 (TESSERA_NODE_GPUS: more,
// for the tests that need them), so that every test's GPU is GPU 0 and the
// tests run one after another.
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
	image, archive := os.Getenv("TESSERA_IMAGE"), os.Getenv("TESSERA_IMAGE_ARCHIVE")
	if _, _, ok := realnode.SplitRef(image); !ok || archive == "" {
		fmt.Fprintf(os.Stderr, "TESSERA_IMAGE (repository:tag, now %q) and TESSERA_IMAGE_ARCHIVE (the OCI archive of make image, now %q) must name the product image: run make node-e2e\n", image, archive)
		return 1
	}
	standin := os.Getenv("TESSERA_MPS_STANDIN")
	if st, err := os.Stat(standin); err != nil || !st.Mode().IsRegular() {
		fmt.Fprintf(os.Stderr, "TESSERA_MPS_STANDIN (the stand-in MPS program, e2e/framework/realnode/mps-standin built static, now %q) must name a file: run make node-e2e\n", standin)
		return 1
	}
	layoutName := clustertest.EnvOr("TESSERA_NODE_DRIVER_LAYOUT", realnode.DefaultDriverLayout)
	driver, ok := realnode.DriverLayouts[layoutName]
	if !ok {
		fmt.Fprintf(os.Stderr, "TESSERA_NODE_DRIVER_LAYOUT=%q: want one of %v\n", layoutName, realnode.DriverLayoutNames())
		return 1
	}
	// Short: the plugin's socket, <kubelet dir>/plugins/gpu.tessera.dev/dra-<pod
	// UID>.sock, must fit a Unix socket address (realnode.Start checks it).
	workDir, err := os.MkdirTemp("", "tne-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	started := time.Now()
	layout := realnode.NewLayout(filepath.Join(workDir, "n"), driver)
	cp, err := cluster.Start(ctx, cluster.Options{BinDir: clustertest.EnvOr("TESSERA_BIN_DIR", cluster.DefaultBinDir()), WorkDir: workDir})
	if err != nil {
		fmt.Fprintf(os.Stderr, "start local control plane: %v\nlogs in %s\n", err, filepath.Join(workDir, "logs"))
		return 1
	}
	local = &cluster.Local{ControlPlane: cp, WorkDir: workDir}
	defer func() {
		var stops []func() error
		if node != nil {
			stops = append(stops, func() error { return node.Stop(context.Background()) })
		}
		fmt.Fprint(os.Stderr, clustertest.Finish(workDir, &code, append(stops, local.Stop)...))
	}()
	gpus, err := strconv.Atoi(clustertest.EnvOr("TESSERA_NODE_GPUS", "1"))
	if err != nil || gpus < 1 {
		fmt.Fprintf(os.Stderr, "TESSERA_NODE_GPUS=%q: want a number of GPUs\n", os.Getenv("TESSERA_NODE_GPUS"))
		return 1
	}
	node, err = realnode.Start(ctx, local.ControlPlane, realnode.Options{
		Name:       nodeName,
		GPUs:       gpus,
		BinDir:     binDir,
		Images:     []realnode.Image{{Archive: archive, Ref: image}},
		Layout:     layout,
		MPSStandin: standin,
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "start real node: %v\n", err)
		local.TailLogs(os.Stderr, 40)
		return 1
	}
	if err := install(ctx, layout, image, gpus); err != nil {
		fmt.Fprintf(os.Stderr, "install Tessera on the real node: %v\n", err)
		local.TailLogs(os.Stderr, 40)
		return 1
	}
	fmt.Printf("control plane, real node (driver layout %s) and Tessera's pods up in %s (kubeconfig %s)\n", layoutName, time.Since(started).Round(100*time.Millisecond), local.Kubeconfig)

	code = m.Run()
	if cluster.JudgeRestarts(os.Stderr, local.Restarts()) && code == 0 {
		code = 1
	}
	if code != 0 {
		local.TailLogs(os.Stderr, 40)
	}
	return code
}

// install installs the chart with the Helm CLI and waits until its plugin
// pod serves on the node.
func install(ctx context.Context, layout realnode.Layout, image string, gpus int) error {
	ports, err := cluster.FreePorts(4)
	if err != nil {
		return err
	}
	values, err := layout.ChartValues(realnode.TryOut{
		Image: image, NVML: fmt.Sprintf("mock:dgxh200:%d", gpus), DriverMPS: true, APIServerURL: local.APIServerURL,
		PluginMetrics: ports[0], PluginHealth: ports[1], ControllerMetrics: ports[2], ControllerHealth: ports[3],
	})
	if err != nil {
		return err
	}
	if err := realnode.InstallChart(ctx, cluster.DefaultHelm(), local.Kubeconfig, values); err != nil {
		return err
	}
	if err := node.WaitPlugin(ctx, ""); err != nil {
		return err
	}
	// The plugin publishes devices with the tenancy binding condition (the
	// chart's default), which only the controller meets.
	return node.WaitPodReady(ctx, "app.kubernetes.io/component=controller")
}

// needNode skips a test when the suite runs without a node.
func needNode(t *testing.T) {
	t.Helper()
	if node == nil {
		t.Skip("no real node: set TESSERA_NODE_E2E=1 or run make node-e2e (as root)")
	}
}
