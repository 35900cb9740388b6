// Command dra-controller is Tessera's tenancy controller: it keeps every
// GPUTenant's admission-policy binding, ResourceQuotas and dedicated
// DeviceClasses in sync and admits each allocation against its tenant's
// budget by setting the claim's binding condition.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/pflag"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/tessera-gpu/tessera/internal/cli"
	"github.com/tessera-gpu/tessera/internal/controller"
)

// options are the command line; every flag can also be set through the
// environment variable of its name in upper case with "_" for "-".
type options struct {
	kubeconfig    string
	qps           float32
	burst         int
	metricsSecure bool
	controller    controller.Options
}

func (o *options) addFlags(fs *pflag.FlagSet) {
	o.controller.Untenanted = controller.UntenantedAllow
	o.controller.AdmissionQueue = controller.QueueFair
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file; in-cluster configuration when empty")
	// client-go's own defaults (5 and 10) would make a cluster's first
	// reconcile, one DeviceTaintRule per time-shared GPU, take minutes.
	fs.Float32Var(&o.qps, "kube-api-qps", 50, "requests per second to the API server")
	fs.IntVar(&o.burst, "kube-api-burst", 100, "requests to the API server in a burst above --kube-api-qps")
	fs.Var(&o.controller.Untenanted, "untenanted", "claims for Tessera's classes in namespaces of no GPUTenant: allow, or deny in the API server")
	fs.Var(&o.controller.AdmissionQueue, "admission-queue", "order of the claims awaiting an admission decision: fair (each tenant's in turn) or fifo (as they came; for benchmarks)")
	fs.StringVar(&o.controller.MetricsAddr, "metrics-bind-address", ":8080", `address of the Prometheus /metrics endpoint; "0" disables it`)
	fs.BoolVar(&o.metricsSecure, "metrics-secure", true, "serve /metrics over HTTPS, only to bearer tokens the API server authenticates whose user may get /metrics (TokenReview, SubjectAccessReview); false serves plain HTTP to anyone")
	fs.StringVar(&o.controller.MetricsCertDir, "metrics-cert-dir", "", "directory holding tls.crt and tls.key for the secure metrics endpoint; empty generates a self-signed certificate at start")
	fs.StringVar(&o.controller.ProbeAddr, "health-probe-bind-address", ":8081", "address of the /healthz and /readyz endpoints")
	fs.DurationVar(&o.controller.IdleAfter, "idle-after", 0, "mark a claim idle (condition tenancy.tessera.dev/idle in its status.devices, an Event, tessera_idle_claims) once the kubelet plugin has reported its devices below its --idle-threshold for this long; 0 marks none")
	fs.DurationVar(&o.controller.IdleSyncInterval, "idle-sync-interval", controller.DefaultIdleSyncInterval, "how often idle marks, their Events and tessera_idle_claims follow the kubelet plugins' idle reports, and idle reclaim (GPUTenant spec.idleReclaim) acts")
	fs.DurationVar(&o.controller.ShowbackStatusInterval, "showback-status-interval", controller.DefaultShowbackStatusInterval, "how often each GPUTenant's status.showback (what it held this calendar month and the last) is brought up to date")
	fs.StringVar(&o.controller.IdleReportNamespace, "idle-report-namespace", "tessera-system", "namespace of the kubelet plugins' idle-report Leases")
	fs.BoolVar(&o.controller.LeaderElection, "leader-elect", true, "elect one active replica through a Lease")
	fs.StringVar(&o.controller.LeaderElectionNamespace, "leader-election-namespace", "tessera-system", "namespace of the leader-election Lease")
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		// A second signal kills the process at once.
		<-ctx.Done()
		stop()
	}()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	o := &options{}
	fs := pflag.NewFlagSet("dra-controller", pflag.ContinueOnError)
	klogFlags := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(klogFlags)
	fs.AddGoFlagSet(klogFlags)
	o.addFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := cli.FromEnv(fs); err != nil {
		return err
	}
	o.controller.InsecureMetrics = !o.metricsSecure
	logger := klog.Background()
	ctrl.SetLogger(logger)
	ctx = klog.NewContext(ctx, logger)
	if o.qps <= 0 || o.burst <= 0 {
		return fmt.Errorf("--kube-api-qps (%g) and --kube-api-burst (%d) must be positive", o.qps, o.burst)
	}
	if o.controller.IdleSyncInterval <= 0 {
		return fmt.Errorf("--idle-sync-interval (%s) must be positive", o.controller.IdleSyncInterval)
	}
	cfg, err := cli.KubeConfig(o.kubeconfig)
	if err != nil {
		return err
	}
	cfg.QPS, cfg.Burst = o.qps, o.burst
	logger.Info("Starting", "untenanted", o.controller.Untenanted, "leaderElection", o.controller.LeaderElection, "secureMetrics", o.metricsSecure)
	return controller.Run(ctx, cfg, o.controller)
}
