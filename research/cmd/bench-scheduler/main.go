// Command bench-scheduler measures the real kube-scheduler placing pods with
// GPU claims on a local control plane of simulated 8 x H200 nodes, for
// Tessera's layout, plain whole devices and NVIDIA's layout in one run (see
// package schedulerbench). make bench-scheduler runs it.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"text/tabwriter"
	"time"

	"k8s.io/klog/v2"

	"github.com/tessera-gpu/tessera/e2e/framework/cluster"
	"github.com/tessera-gpu/tessera/research/schedulerbench"
	"github.com/tessera-gpu/tessera/research/scheduling"
)

func main() {
	opts := schedulerbench.Options{Out: os.Stdout, Layouts: []scheduling.Layout{scheduling.Plain, scheduling.NVIDIA, scheduling.Tessera, schedulerbench.Withdrawn}}
	fs := flag.NewFlagSet("bench-scheduler", flag.ExitOnError)
	fs.StringVar(&opts.BinDir, "bin-dir", cluster.DefaultBinDir(), "directory with etcd, kube-apiserver, kube-controller-manager, kube-scheduler (make cluster-binaries)")
	fs.StringVar(&opts.WorkDir, "work-dir", "", "directory for cluster state and logs (default: a new temporary directory)")
	fs.IntVar(&opts.Nodes, "nodes", 500, "simulated 8 x H200 nodes")
	fs.IntVar(&opts.Pods, "pods", 1000, "pods placed per layout")
	fs.DurationVar(&opts.PhaseTimeout, "phase-timeout", 3*time.Minute, "longest time one layout's pods may take")
	fs.StringVar(&opts.TesseraScheduler, "tessera-scheduler", "", "tessera-scheduler binary (make tessera-scheduler): also measure it on the default layout, after kube-scheduler's layouts")
	klog.InitFlags(fs)
	_ = fs.Parse(os.Args[1:])

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if opts.WorkDir == "" {
		dir, err := os.MkdirTemp("", "bench-scheduler-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench-scheduler:", err)
			os.Exit(1)
		}
		opts.WorkDir = dir
	}
	results, err := schedulerbench.Run(ctx, opts)
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	_, _ = fmt.Fprintf(w, "layout\tpods bound\tpods/s\tattempt p50\tattempt p99\tcreate→bound p50\tcreate→bound p99\t\n")
	for _, r := range results {
		_, _ = fmt.Fprintf(w, "%s\t%d/%d\t%.1f\t%s\t%s\t%s\t%s\t\n", r.Layout, r.Placed, r.Pods, r.PodsPerSecond,
			r.AttemptP50.Round(time.Microsecond), r.AttemptP99.Round(time.Microsecond), r.BoundP50.Round(time.Millisecond), r.BoundP99.Round(time.Millisecond))
	}
	_ = w.Flush()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench-scheduler:", err)
		os.Exit(1)
	}
}
