package plugin

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/internal/hardware"
	"github.com/tessera-gpu/tessera/internal/metrics"
	tnvml "github.com/tessera-gpu/tessera/internal/nvml"
	"github.com/tessera-gpu/tessera/internal/sharing"
	"github.com/tessera-gpu/tessera/pkg/resourceslice"
)

// Config is the kubelet plugin's configuration: what its command line
// says (AddFlags, AddRunFlags; every flag can also be set through the
// environment variable of its name in upper case with "_" for "-"),
// checked once by Validate before anything starts.
type Config struct {
	// NodeName is the node this plugin serves, and the name of its pool.
	NodeName string
	// Kubeconfig is the kubeconfig file; in-cluster configuration when empty.
	Kubeconfig string
	// NVMLBackend is real NVML, or a mock model.
	NVMLBackend tnvml.Backend
	// PluginDataDir holds the DRA gRPC socket.
	PluginDataDir string
	// RegistrarDir is where the kubelet looks for registration sockets.
	RegistrarDir string
	// CDIRoot is the directory of the CDI spec files.
	CDIRoot string
	// StateDir holds the checkpoint, the MPS daemons' directories and a
	// mock's MIG state.
	StateDir string
	// DriverRoot is the NVIDIA driver's root on the host, which every
	// path in a CDI spec starts with.
	DriverRoot string
	// ContainerDriverRoot is where this process sees DriverRoot: NVML and
	// the driver's binaries and /proc are read there (default DriverRoot).
	ContainerDriverRoot string
	// Slices are the publication choices (pool attribute, MIG and sharing
	// switches, withdrawal of blocked devices; see SliceOptions).
	Slices resourceslice.Options
	// Tenancy publishes devices with tenancy's binding conditions.
	Tenancy bool
	// RediscoverInterval is how often the inventory is read again to
	// republish slices when it changed (GPU lost, MIG mode changed).
	RediscoverInterval time.Duration
	// PodUID, when set, is the UID of the plugin's own pod: the kubelet
	// plugin helper then registers under a name of its own, so that an old
	// and a new instance can run side by side during a rolling update
	// (their gRPC calls are serialised through a lock file).
	PodUID types.UID
	// MetricsAddress serves Prometheus /metrics; empty disables it.
	MetricsAddress string
	// MetricsSecure serves /metrics over TLS to authenticated, authorised
	// bearer tokens only, with the certificate of MetricsCertDir (empty:
	// self-signed).
	MetricsSecure  bool
	MetricsCertDir string
	// HealthPort serves the gRPC health probe; negative disables it.
	HealthPort int
	// HealthAddress is the address the health probe listens on with
	// HealthPort; empty is every address of the node (where the kubelet
	// probes the pod).
	HealthAddress string
	// AllowMissingCheckpoint lets start-up go on without a checkpoint
	// although MIG instances exist, destroying them (see
	// prepare.WithMissingCheckpointAllowed).
	AllowMissingCheckpoint bool
	// DriverMPS runs MPS daemons with the driver root's
	// nvidia-cuda-mps-control even on a mock backend (hardware.Config).
	DriverMPS bool
	// MPSLauncher runs real MPS daemons, holding their liveness locks and
	// giving them a private /dev/shm: this binary's "mps-launch"
	// subcommand. Not a flag.
	MPSLauncher []string
	// MPSShmSize is the size of each claim's MPS /dev/shm (a tmpfs).
	MPSShmSize resource.QuantityValue
	// HostProc is the host's /proc as this process sees it (the chart
	// mounts it read-only at /host/proc): NVML reports host PIDs, which the
	// claim metrics translate through it into this process's PID
	// namespace. Empty takes NVML's PIDs as they are, right for a plugin in
	// the host's PID namespace.
	HostProc string
	// ClaimMetricsInterval is how often the prepared claims' devices are
	// sampled for the tessera_claim_gpu_* metrics; 0 disables them.
	ClaimMetricsInterval time.Duration
	// IdleThreshold is the utilization ratio below which a claim's devices
	// count as idle in the node's idle report, published in the Lease
	// tenancyv1.IdleReportName(node) of IdleReportNamespace after each
	// sample that changed it; 0 publishes none. It needs the claim metrics'
	// samples and a client.
	IdleThreshold       float64
	IdleReportNamespace string
	// MPSCheckInterval is how often MPS daemons are checked and restarted
	// (default 1 s): how long a claim's new CUDA processes may run without
	// MPS, so without limits, after its daemon died (e.g. with the other
	// pod of a rolling update). A check reads a directory and probes a
	// lock per daemon. Not a flag.
	MPSCheckInterval time.Duration
	// StaleClaimInterval is how often checkpoint entries whose claim is
	// gone, and used by no pod on the node, are unprepared (see
	// CleanStaleClaims; default 1 min). Not a flag.
	StaleClaimInterval time.Duration
}

// AddFlags adds the flags every command of the plugin shares: which GPUs,
// and what is published of them.
func (c *Config) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.NodeName, "node-name", "", "name of the node this plugin serves")
	fs.Var(backendFlag{&c.NVMLBackend}, "nvml", `NVML backend: "real", or "mock:<dgxa100|dgxh100|dgxh200|dgxb200>[:<gpus>]"`)
	fs.StringVar(&c.Slices.Pool, "pool", gpuapi.PoolDefault, `value of the pool attribute of every device: "`+gpuapi.PoolDefault+`" (the shipped classes) or a tenant's dedicated pool`)
	fs.BoolVar(&c.Slices.Partition.DisableMIG, "disable-mig", false, "do not offer MIG partitions")
	fs.BoolVar(&c.Slices.Partition.DisableSharing, "disable-sharing", false, "do not offer time-shared GPUs")
	fs.BoolVar(&c.Slices.WithdrawBlocked, "withdraw-blocked", true, "publish only what can still be allocated: leave out the devices that prepared ones block (a GPU's partitions while it is whole or shared, overlapping placements, ...) and publish them again once unprepared; each GPU's devices go in a slice of their own; false publishes every device at all times, packed into slices of 64")
	fs.StringVar(&c.ContainerDriverRoot, "container-driver-root", "", "where this process sees the driver root given by --driver-root (e.g. /driver-root where the chart mounts it); NVML, nvidia-smi, the MPS daemon and /proc/devices are read from here; empty: the --driver-root path itself")
	fs.BoolVar(&c.Tenancy, "tenancy", false, "publish devices with tenancy's binding conditions: pods bind only once the tenancy controller has admitted their allocation against the tenant's budget")
}

// AddRunFlags adds the flags of serving the node.
func (c *Config) AddRunFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.Kubeconfig, "kubeconfig", "", "kubeconfig file; in-cluster configuration when empty")
	fs.StringVar(&c.PluginDataDir, "plugin-data-dir", "/var/lib/kubelet/plugins/"+gpuapi.DriverName, "directory of the DRA gRPC socket")
	fs.StringVar(&c.RegistrarDir, "registrar-dir", "/var/lib/kubelet/plugins_registry", "directory where the kubelet discovers plugins")
	fs.StringVar(&c.CDIRoot, "cdi-root", "/var/run/cdi", "directory of the CDI spec files")
	fs.StringVar(&c.StateDir, "state-dir", "/var/lib/tessera", "directory of the plugin's checkpoint")
	fs.StringVar(&c.DriverRoot, "driver-root", "/", "root of the NVIDIA driver on the host (e.g. /run/nvidia/driver with the GPU operator): the container runtime reads CDI specs on the host, so every device path in them starts here")
	fs.StringVar(&c.MetricsAddress, "metrics-address", "", "address of the Prometheus /metrics endpoint, e.g. :8080; empty disables it")
	fs.BoolVar(&c.MetricsSecure, "metrics-secure", true, "serve /metrics over HTTPS, only to bearer tokens the API server authenticates whose user may get /metrics (TokenReview, SubjectAccessReview); false serves plain HTTP to anyone")
	fs.StringVar(&c.MetricsCertDir, "metrics-cert-dir", "", "directory holding tls.crt and tls.key for the secure metrics endpoint, reloaded when they change; empty generates a self-signed certificate at start")
	fs.IntVar(&c.HealthPort, "healthcheck-port", -1, "port of the gRPC health endpoint for probes, e.g. 51515; negative disables it")
	fs.StringVar(&c.HealthAddress, "healthcheck-address", "", "address the gRPC health endpoint listens on, e.g. 127.0.0.1; empty listens on every address (where the kubelet probes the pod)")
	fs.DurationVar(&c.ClaimMetricsInterval, "claim-metrics-interval", 10*time.Second, "how often each prepared claim's devices are sampled through NVML for the tessera_claim_gpu_* metrics (utilization, memory, energy per claim and pod); 0 disables them")
	fs.StringVar(&c.HostProc, "host-proc", "", "the host's /proc as this process sees it (e.g. /host/proc, mounted read-only): NVML lists processes under their host PIDs, which the per-claim metrics of shares translate through it into this process's PID namespace, and for processes of other namespaces read their pod from its cgroup file; empty takes NVML's PIDs as they are (a plugin in the host's PID namespace)")
	fs.Float64Var(&c.IdleThreshold, "idle-threshold", 0, "utilization ratio (0-1) below which every device of a claim must stay, sample after sample, for the claim to count as idle in the node's idle report (the Lease gpu-idle.<node> in --idle-report-namespace, which the controller reads for --idle-after); 0 publishes no report")
	fs.StringVar(&c.IdleReportNamespace, "idle-report-namespace", "tessera-system", "namespace of the node's idle-report Lease")
	fs.DurationVar(&c.RediscoverInterval, "rediscover-interval", 30*time.Second, "how often GPUs are rediscovered to republish changed slices")
	fs.Var(uidFlag{&c.PodUID}, "pod-uid", "UID of the plugin's own pod (from the downward API), which lets an old and a new plugin run side by side during a rolling update")
	fs.BoolVar(&c.AllowMissingCheckpoint, "allow-missing-checkpoint", false, "start although the checkpoint is missing and MIG instances exist; destroys every MIG instance no claim owns")
	fs.BoolVar(&c.DriverMPS, "driver-mps", false, `with a mock --nvml backend, run MPS-shared claims' daemons with the driver root's nvidia-cuda-mps-control, through the same code as on a GPU node, instead of simulating them in memory: for a fake driver root whose MPS binaries run (make node-e2e installs a stand-in); with real NVML they always are`)
	c.MPSShmSize.Quantity = *resource.NewQuantity(sharing.DefaultShmSize, resource.BinarySI)
	fs.Var(&c.MPSShmSize, "mps-shm-size", "size of each MPS-shared claim's /dev/shm, an in-memory tmpfs of its own")
}

// Validate returns every problem of a configuration to serve the node with.
func (c *Config) Validate() error {
	var errs []error
	if c.NodeName == "" {
		errs = append(errs, errors.New("--node-name (or NODE_NAME) is required"))
	}
	if c.IdleThreshold < 0 || c.IdleThreshold > 1 {
		errs = append(errs, fmt.Errorf("--idle-threshold=%v: want a utilization ratio from 0 to 1", c.IdleThreshold))
	}
	if c.ClaimMetricsInterval < 0 {
		errs = append(errs, fmt.Errorf("--claim-metrics-interval=%v: want 0 (off) or more", c.ClaimMetricsInterval))
	}
	if c.MPSShmSize.Sign() < 0 {
		errs = append(errs, fmt.Errorf("--mps-shm-size=%s: want 0 (the default) or more", c.MPSShmSize.String()))
	}
	return errors.Join(errs...)
}

// SliceOptions are the publication choices, with tenancy's binding
// conditions when Tenancy is set.
func (c *Config) SliceOptions() resourceslice.Options {
	opts := c.Slices
	if c.Tenancy {
		opts.BindingConditions = []string{tenancyv1.ConditionAdmitted}
		opts.BindingFailureConditions = []string{tenancyv1.ConditionRejected}
	}
	return opts
}

// ContainerRoot is the driver root as this process sees it.
func (c *Config) ContainerRoot() string {
	if c.ContainerDriverRoot != "" {
		return c.ContainerDriverRoot
	}
	if c.DriverRoot != "" {
		return c.DriverRoot
	}
	return "/"
}

// Hardware is what the node's hardware is opened with; a mock keeps its
// MIG state under stateDir when that is set (hardware.Config.StateDir).
func (c *Config) Hardware(stateDir string) hardware.Config {
	return hardware.Config{
		NVML: c.NVMLBackend, Seed: c.NodeName, DriverRoot: c.ContainerRoot(), StateDir: stateDir,
		DriverMPS: c.DriverMPS, MPSLauncher: c.MPSLauncher, MPSShmSize: c.MPSShmSize.Value(),
	}
}

// metricsServeOptions are the metrics endpoint's: authenticated over TLS
// unless MetricsSecure is off.
func (c *Config) metricsServeOptions(client kubernetes.Interface) []metrics.ServeOption {
	if !c.MetricsSecure {
		return nil
	}
	return []metrics.ServeOption{metrics.Secure(client, c.MetricsCertDir)}
}

// backendFlag parses --nvml when it is set, so that a bad backend is
// reported with the flag.
type backendFlag struct{ b *tnvml.Backend }

func (f backendFlag) String() string {
	if f.b == nil {
		return "real"
	}
	return f.b.String()
}

func (f backendFlag) Set(s string) error {
	b, err := tnvml.ParseBackend(s)
	if err != nil {
		return err
	}
	*f.b = b
	return nil
}

func (backendFlag) Type() string { return "backend" }

// uidFlag is a UID-typed string flag.
type uidFlag struct{ uid *types.UID }

func (f uidFlag) String() string {
	if f.uid == nil {
		return ""
	}
	return string(*f.uid)
}

func (f uidFlag) Set(s string) error { *f.uid = types.UID(s); return nil }

func (uidFlag) Type() string { return "string" }
