// Command tessera-local runs Tessera on a local cluster built from pinned upstream
// binaries, with simulated GPU nodes:
//
//	tessera-local demo          cluster + sample workloads + a table of what they got
//	tessera-local dev-cluster   cluster only; prints "ready kubeconfig=<path>"
//
// Both run until interrupted.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"k8s.io/klog/v2"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/tessera-gpu/tessera/demo"
	"github.com/tessera-gpu/tessera/e2e/framework/cluster"
)

func main() {
	if len(os.Args) < 2 || (os.Args[1] != "demo" && os.Args[1] != "dev-cluster") {
		fmt.Fprintln(os.Stderr, "usage: tessera-local demo|dev-cluster [flags]")
		os.Exit(2)
	}
	cmd := os.Args[1]
	fs := flag.NewFlagSet(cmd, flag.ExitOnError)
	opts := demo.Options{Out: os.Stdout}
	fs.StringVar(&opts.BinDir, "bin-dir", cluster.DefaultBinDir(), "directory with etcd, kube-apiserver, kube-controller-manager, kube-scheduler (make cluster-binaries)")
	fs.StringVar(&opts.PluginBinary, "plugin", cluster.DefaultPluginBinary(), "dra-kubelet-plugin binary")
	fs.StringVar(&opts.ControllerBinary, "controller", cluster.DefaultControllerBinary(), "dra-controller binary (tenancy)")
	fs.StringVar(&opts.Helm, "helm", cluster.DefaultHelm(), "Helm CLI that renders Tessera's chart (make builds it from tools/helm; default $TESSERA_HELM)")
	fs.StringVar(&opts.WorkDir, "work-dir", "", "directory for cluster state and logs (default: a new temporary directory)")
	fs.IntVar(&opts.Nodes, "nodes", demo.DefaultNodes, "number of simulated GPU nodes")
	fs.StringVar(&opts.NVML, "nvml", demo.DefaultNVML, "NVML backend of every node's plugin")
	fs.StringVar(&opts.TesseraScheduler, "tessera-scheduler", os.Getenv(cluster.TesseraSchedulerEnv), "tessera-scheduler binary to run as a second scheduler (schedulerName tessera-scheduler); none when empty")
	fs.StringVar(&opts.Kubectl, "kubectl", "kubectl", "kubectl the demo's hints name (make demo builds bin/kubectl at the cluster's version)")
	klog.InitFlags(fs)
	_ = fs.Set("logtostderr", "true")
	_ = fs.Parse(os.Args[2:])
	// The demo's tenancy part reads GPUTenants with a controller-runtime
	// client, which logs through controller-runtime's logger: without one it
	// prints a stack trace once the process is older than 30 s.
	ctrllog.SetLogger(klog.Background())

	// The first signal stops the cluster cleanly; a second one kills us at once.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop()
	}()
	var err error
	switch cmd {
	case "demo":
		err = demo.Demo(ctx, opts)
	case "dev-cluster":
		err = demo.DevCluster(ctx, opts)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "tessera-local:", err)
		os.Exit(1)
	}
}
