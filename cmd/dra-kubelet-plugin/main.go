// Command dra-kubelet-plugin is Tessera's kubelet plugin: it publishes the
// node's GPUs as ResourceSlices and prepares allocated devices. Its
// "slices" subcommand prints, without a cluster, the slices it would publish;
// its "nvml-report" subcommand compares what discovery sees with the mocks.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/internal/cli"
	"github.com/tessera-gpu/tessera/internal/hardware"
	"github.com/tessera-gpu/tessera/internal/metrics"
	tnvml "github.com/tessera-gpu/tessera/internal/nvml"
	"github.com/tessera-gpu/tessera/internal/nvmlreport"
	"github.com/tessera-gpu/tessera/internal/plugin"
	"github.com/tessera-gpu/tessera/internal/sharing"
	"github.com/tessera-gpu/tessera/pkg/partition"
	"github.com/tessera-gpu/tessera/pkg/resourceslice"
)

// options are the command line; every flag can also be set through the
// environment variable of its name in upper case with "_" for "-".
type options struct {
	nodeName               string
	kubeconfig             string
	nvml                   string
	pluginDataDir          string
	registrarDir           string
	cdiRoot                string
	stateDir               string
	driverRoot             string
	containerDriverRoot    string
	metricsAddress         string
	metricsSecure          bool
	metricsCertDir         string
	healthPort             int
	healthAddress          string
	pool                   string
	disableMIG             bool
	disableSharing         bool
	tenancy                bool
	withdrawBlocked        bool
	rediscover             time.Duration
	mpsShmSize             resource.QuantityValue
	podUID                 string
	allowMissingCheckpoint bool
	driverMPS              bool
	claimMetricsInterval   time.Duration
	idleThreshold          float64
	idleReportNamespace    string
}

func (o *options) addFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.nodeName, "node-name", "", "name of the node this plugin serves")
	fs.StringVar(&o.nvml, "nvml", "real", `NVML backend: "real", or "mock:<dgxa100|dgxh100|dgxh200|dgxb200>[:<gpus>]"`)
	fs.StringVar(&o.pool, "pool", gpuapi.PoolDefault, `value of the pool attribute of every device: "`+gpuapi.PoolDefault+`" (the shipped classes) or a tenant's dedicated pool`)
	fs.BoolVar(&o.disableMIG, "disable-mig", false, "do not offer MIG partitions")
	fs.BoolVar(&o.disableSharing, "disable-sharing", false, "do not offer time-shared GPUs")
	fs.BoolVar(&o.withdrawBlocked, "withdraw-blocked", true, "publish only what can still be allocated: leave out the devices that prepared ones block (a GPU's partitions while it is whole or shared, overlapping placements, ...) and publish them again once unprepared; each GPU's devices go in a slice of their own; false publishes every device at all times, packed into slices of 64")
	fs.StringVar(&o.containerDriverRoot, "container-driver-root", "", "where this process sees the driver root given by --driver-root (e.g. /driver-root where the chart mounts it); NVML, nvidia-smi, the MPS daemon and /proc/devices are read from here; empty: the --driver-root path itself")
	fs.BoolVar(&o.tenancy, "tenancy", false, "publish devices with tenancy's binding conditions: pods bind only once the tenancy controller has admitted their allocation against the tenant's budget")
}

func (o *options) addRunFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file; in-cluster configuration when empty")
	fs.StringVar(&o.pluginDataDir, "plugin-data-dir", "/var/lib/kubelet/plugins/"+gpuapi.DriverName, "directory of the DRA gRPC socket")
	fs.StringVar(&o.registrarDir, "registrar-dir", "/var/lib/kubelet/plugins_registry", "directory where the kubelet discovers plugins")
	fs.StringVar(&o.cdiRoot, "cdi-root", "/var/run/cdi", "directory of the CDI spec files")
	fs.StringVar(&o.stateDir, "state-dir", "/var/lib/tessera", "directory of the plugin's checkpoint")
	fs.StringVar(&o.driverRoot, "driver-root", "/", "root of the NVIDIA driver on the host (e.g. /run/nvidia/driver with the GPU operator): the container runtime reads CDI specs on the host, so every device path in them starts here")
	fs.StringVar(&o.metricsAddress, "metrics-address", "", "address of the Prometheus /metrics endpoint, e.g. :8080; empty disables it")
	fs.BoolVar(&o.metricsSecure, "metrics-secure", true, "serve /metrics over HTTPS, only to bearer tokens the API server authenticates whose user may get /metrics (TokenReview, SubjectAccessReview); false serves plain HTTP to anyone")
	fs.StringVar(&o.metricsCertDir, "metrics-cert-dir", "", "directory holding tls.crt and tls.key for the secure metrics endpoint, reloaded when they change; empty generates a self-signed certificate at start")
	fs.IntVar(&o.healthPort, "healthcheck-port", -1, "port of the gRPC health endpoint for probes, e.g. 51515; negative disables it")
	fs.StringVar(&o.healthAddress, "healthcheck-address", "", "address the gRPC health endpoint listens on, e.g. 127.0.0.1; empty listens on every address (where the kubelet probes the pod)")
	fs.DurationVar(&o.claimMetricsInterval, "claim-metrics-interval", 10*time.Second, "how often each prepared claim's devices are sampled through NVML for the tessera_claim_gpu_* metrics (utilization, memory, energy per claim and pod); 0 disables them")
	fs.Float64Var(&o.idleThreshold, "idle-threshold", 0, "utilization ratio (0-1) below which every device of a claim must stay, sample after sample, for the claim to count as idle in the node's idle report (the Lease gpu-idle.<node> in --idle-report-namespace, which the controller reads for --idle-after); 0 publishes no report")
	fs.StringVar(&o.idleReportNamespace, "idle-report-namespace", "tessera-system", "namespace of the node's idle-report Lease")
	fs.DurationVar(&o.rediscover, "rediscover-interval", 30*time.Second, "how often GPUs are rediscovered to republish changed slices")
	fs.StringVar(&o.podUID, "pod-uid", "", "UID of the plugin's own pod (from the downward API), which lets an old and a new plugin run side by side during a rolling update")
	fs.BoolVar(&o.allowMissingCheckpoint, "allow-missing-checkpoint", false, "start although the checkpoint is missing and MIG instances exist; destroys every MIG instance no claim owns")
	fs.BoolVar(&o.driverMPS, "driver-mps", false, `with a mock --nvml backend, run MPS-shared claims' daemons with the driver root's nvidia-cuda-mps-control, through the same code as on a GPU node, instead of simulating them in memory: for a fake driver root whose MPS binaries run (make node-e2e installs a stand-in); with real NVML they always are`)
	o.mpsShmSize.Quantity = *resource.NewQuantity(sharing.DefaultShmSize, resource.BinarySI)
	fs.Var(&o.mpsShmSize, "mps-shm-size", "size of each MPS-shared claim's /dev/shm, an in-memory tmpfs of its own")
}

func (o *options) sliceOptions() resourceslice.Options {
	opts := resourceslice.Options{
		Pool:            o.pool,
		Partition:       partition.Options{DisableMIG: o.disableMIG, DisableSharing: o.disableSharing},
		WithdrawBlocked: o.withdrawBlocked,
	}
	if o.tenancy {
		opts.BindingConditions = []string{tenancyv1.ConditionAdmitted}
		opts.BindingFailureConditions = []string{tenancyv1.ConditionRejected}
	}
	return opts
}

// metricsServeOptions are the metrics endpoint's: authenticated over TLS
// unless --metrics-secure=false.
func (o *options) metricsServeOptions(client kubernetes.Interface) []metrics.ServeOption {
	if !o.metricsSecure {
		return nil
	}
	return []metrics.ServeOption{metrics.Secure(client, o.metricsCertDir)}
}

// containerRoot is the driver root as this process sees it.
func (o *options) containerRoot() string {
	if o.containerDriverRoot != "" {
		return o.containerDriverRoot
	}
	if o.driverRoot != "" {
		return o.driverRoot
	}
	return "/"
}

// hardwareConfig is what the node's hardware is opened with; a mock keeps
// its MIG state under stateDir when that is set.
func (o *options) hardwareConfig(stateDir string) (hardware.Config, error) {
	b, err := tnvml.ParseBackend(o.nvml)
	if err != nil {
		return hardware.Config{}, err
	}
	return hardware.Config{
		NVML: b, Seed: o.nodeName, DriverRoot: o.containerRoot(), StateDir: stateDir,
		DriverMPS: o.driverMPS, MPSShmSize: o.mpsShmSize.Value(),
	}, nil
}

// openFailed says where real NVML was looked for when it failed to load.
func (o *options) openFailed(cfg hardware.Config, err error) error {
	if err == nil || cfg.NVML.Mock != "" {
		return err
	}
	roots := "--container-driver-root=" + cfg.DriverRoot
	if o.driverRoot != "" && o.driverRoot != cfg.DriverRoot {
		roots += ", where the host's --driver-root=" + o.driverRoot + " is mounted"
	}
	return fmt.Errorf("%w (%s): is the NVIDIA driver installed under the driver root (chart value kubeletPlugin.driverRoot)?", err, roots)
}

// openNVML opens the --nvml backend's NVML alone, its mock state in memory.
func (o *options) openNVML() (tnvml.Library, error) {
	cfg, err := o.hardwareConfig("")
	if err != nil {
		return nil, err
	}
	lib, err := hardware.OpenNVML(cfg)
	return lib, o.openFailed(cfg, err)
}

func main() {
	signalled, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		// A second signal kills the process at once.
		<-signalled.Done()
		stop()
	}()
	ctx := klog.NewContext(signalled, klog.Background())
	if err := newCommand().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
}

func newCommand() *cobra.Command {
	o := &options{}
	root := &cobra.Command{
		Use:           "dra-kubelet-plugin",
		Short:         "Tessera's DRA kubelet plugin for NVIDIA GPUs",
		SilenceUsage:  true,
		SilenceErrors: true,
		PreRunE:       func(cmd *cobra.Command, _ []string) error { return cli.FromEnv(cmd.Flags()) },
		RunE:          func(cmd *cobra.Command, _ []string) error { return run(cmd.Context(), o) },
	}
	klogFlags := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(klogFlags)
	root.PersistentFlags().AddGoFlagSet(klogFlags)
	o.addFlags(root.PersistentFlags())
	o.addRunFlags(root.Flags())

	root.AddCommand(&cobra.Command{
		Use:     "slices",
		Short:   "Print the ResourceSlices this node would publish, as a YAML stream",
		Example: "  dra-kubelet-plugin slices --nvml=mock:dgxh200 --node-name=n1",
		Args:    cobra.NoArgs,
		PreRunE: func(cmd *cobra.Command, _ []string) error { return cli.FromEnv(cmd.Flags()) },
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.nodeName == "" {
				return fmt.Errorf("--node-name is required")
			}
			lib, err := o.openNVML()
			if err != nil {
				return err
			}
			defer func() { _ = lib.Shutdown() }()
			node, err := lib.Discover(cmd.Context())
			if err != nil {
				return fmt.Errorf("discover GPUs: %w", err)
			}
			res := resourceslice.Build(o.nodeName, node, o.sliceOptions())
			return resourceslice.WriteYAML(cmd.OutOrStdout(), resourceslice.Objects(o.nodeName, res))
		},
	})
	root.AddCommand(&cobra.Command{
		Use:   "nvml-report",
		Short: "Print what discovery sees on this node's GPUs and compare each with the mock's model of its product; changes nothing",
		Long: "Print, for each GPU, what Tessera's discovery sees (identity, memory, MIG mode current and pending, MIG instances, " +
			"the MIG profiles and placements, NVML's own profile names, the devices Tessera would publish) and compare it, line by line, " +
			"with the mock model of the GPU's product that Tessera's tests run on: \"=\" agrees, \"!\" differs in a way that matters " +
			"(the tests prove less than they seem to), \"~\" differs in a way that does not. Exits non-zero on any difference that matters. " +
			"Only reads from NVML: no MIG mode change, no instance created or destroyed.",
		Example: "  dra-kubelet-plugin nvml-report --driver-root=/run/nvidia/driver",
		Args:    cobra.NoArgs,
		PreRunE: func(cmd *cobra.Command, _ []string) error { return cli.FromEnv(cmd.Flags()) },
		RunE: func(cmd *cobra.Command, _ []string) error {
			lib, err := o.openNVML()
			if err != nil {
				return err
			}
			defer func() { _ = lib.Shutdown() }()
			n, err := nvmlreport.Write(cmd.Context(), cmd.OutOrStdout(), lib, o.sliceOptions().Partition)
			if err != nil {
				return err
			}
			if n > 0 {
				return fmt.Errorf("%d differences that matter between this node's GPUs and Tessera's mock models", n)
			}
			return nil
		},
	})
	root.AddCommand(newMPSLaunchCommand())
	return root
}

// newMPSLaunchCommand is how the plugin starts an MPS control daemon: it
// runs the daemon with a private /dev/shm and holds the daemon's liveness
// lock until the daemon exits (see sharing.Launch).
func newMPSLaunchCommand() *cobra.Command {
	var shm string
	cmd := &cobra.Command{
		Use:    "mps-launch --shm DIR -- COMMAND [ARG...]",
		Short:  "Run COMMAND in a private mount namespace whose /dev/shm is DIR, holding the lock on descriptor 3 while it runs (used to start MPS daemons)",
		Hidden: true,
		Args:   cobra.MinimumNArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			if shm == "" {
				return fmt.Errorf("--shm is required")
			}
			return sharing.Launch(shm, args, os.Environ())
		},
	}
	cmd.Flags().StringVar(&shm, "shm", "", "directory to mount on /dev/shm")
	return cmd
}

func run(ctx context.Context, o *options) error {
	if o.nodeName == "" {
		return fmt.Errorf("--node-name (or NODE_NAME) is required")
	}
	config, err := cli.KubeConfig(o.kubeconfig)
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		return fmt.Errorf("create Kubernetes client: %w", err)
	}
	// A mock's MIG instances outlive a plugin restart, as on hardware, so
	// that restarts on simulated nodes test the checkpoint against what the
	// GPUs really hold.
	hwConfig, err := o.hardwareConfig(o.stateDir)
	if err != nil {
		return err
	}
	// Every real MPS daemon is started through this binary's launcher,
	// whether the GPUs are real or mocked (--driver-mps).
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own executable for the MPS launcher: %w", err)
	}
	hwConfig.MPSLauncher = []string{exe, "mps-launch"}
	hw, err := hardware.Open(ctx, hwConfig)
	if err != nil {
		return o.openFailed(hwConfig, err)
	}
	defer func() { _ = hw.Close() }()
	return plugin.RunNode(ctx, plugin.Options{
		NodeName:           o.nodeName,
		KubeClient:         client,
		PluginDataDir:      o.pluginDataDir,
		RegistrarDir:       o.registrarDir,
		Slices:             o.sliceOptions(),
		RediscoverInterval: o.rediscover,
		PodUID:             types.UID(o.podUID),
	}, plugin.NodeOptions{
		Hardware:               hw,
		CDIRoot:                o.cdiRoot,
		StateDir:               o.stateDir,
		DriverRoot:             o.driverRoot,
		MetricsAddress:         o.metricsAddress,
		MetricsServeOptions:    o.metricsServeOptions(client),
		HealthPort:             o.healthPort,
		HealthAddress:          o.healthAddress,
		AllowMissingCheckpoint: o.allowMissingCheckpoint,
		ClaimMetricsInterval:   o.claimMetricsInterval,
		IdleThreshold:          o.idleThreshold,
		IdleReportNamespace:    o.idleReportNamespace,
	})
}
