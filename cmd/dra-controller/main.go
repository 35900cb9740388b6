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
	"strings"
	"syscall"

	"github.com/spf13/pflag"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/tessera-gpu/tessera/internal/controller"
)

// options are the command line; every flag can also be set through the
// environment variable of its name in upper case with "_" for "-".
type options struct {
	kubeconfig string
	controller controller.Options
}

func (o *options) addFlags(fs *pflag.FlagSet) {
	o.controller.Untenanted = controller.UntenantedAllow
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file; in-cluster configuration when empty")
	fs.Var(&o.controller.Untenanted, "untenanted", "claims for Tessera's classes in namespaces of no GPUTenant: allow, or deny in the API server")
	fs.StringVar(&o.controller.MetricsAddr, "metrics-bind-address", ":8080", `address of the Prometheus /metrics endpoint; "0" disables it`)
	fs.StringVar(&o.controller.ProbeAddr, "health-probe-bind-address", ":8081", "address of the /healthz and /readyz endpoints")
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
	if err := fromEnv(fs); err != nil {
		return err
	}
	logger := klog.Background()
	ctrl.SetLogger(logger)
	ctx = klog.NewContext(ctx, logger)
	cfg, err := kubeConfig(o.kubeconfig)
	if err != nil {
		return err
	}
	logger.Info("Starting", "untenanted", o.controller.Untenanted, "leaderElection", o.controller.LeaderElection)
	return controller.Run(ctx, cfg, o.controller)
}

// fromEnv fills flags the command line left unset from the environment.
func fromEnv(fs *pflag.FlagSet) error {
	var err error
	fs.VisitAll(func(f *pflag.Flag) {
		env := strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(env); ok && !f.Changed && err == nil {
			if serr := f.Value.Set(v); serr != nil {
				err = fmt.Errorf("environment variable %s: %w", env, serr)
			}
		}
	})
	return err
}

func kubeConfig(path string) (*rest.Config, error) {
	if path == "" {
		c, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("in-cluster configuration (pass --kubeconfig outside a cluster): %w", err)
		}
		return c, nil
	}
	c, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig %s: %w", path, err)
	}
	return c, nil
}
