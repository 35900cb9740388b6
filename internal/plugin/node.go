package plugin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/tessera-gpu/tessera/internal/claimusage"
	"github.com/tessera-gpu/tessera/internal/hardware"
	"github.com/tessera-gpu/tessera/internal/health"
	"github.com/tessera-gpu/tessera/internal/metrics"
	tnvml "github.com/tessera-gpu/tessera/internal/nvml"
	"github.com/tessera-gpu/tessera/internal/prepare"
	"github.com/tessera-gpu/tessera/pkg/inventory"
)

// NodeOptions configure the node-side services around the kubelet plugin.
type NodeOptions struct {
	// Hardware is the node's GPUs and driver, real or simulated
	// (hardware.Open); its NVML is the one the plugin publishes from.
	Hardware hardware.Node
	CDIRoot  string
	StateDir string
	// DriverRoot is the NVIDIA driver's root on the host, which every
	// path in a CDI spec starts with (default /).
	DriverRoot string
	// MetricsAddress serves Prometheus /metrics; empty disables it.
	MetricsAddress string
	// MetricsServeOptions configure the metrics endpoint, e.g.
	// metrics.Secure for authenticated scrapes over TLS.
	MetricsServeOptions []metrics.ServeOption
	// HealthPort serves the gRPC health probe; negative disables it.
	HealthPort int
	// HealthAddress is the address the health probe listens on with HealthPort;
	// empty is every address of the node (where the kubelet probes the pod).
	HealthAddress string
	// MPSCheckInterval is how often MPS daemons are checked and restarted
	// (default 1 s): how long a claim's new CUDA processes may run without
	// MPS, so without limits, after its daemon died (e.g. with the other
	// pod of a rolling update). A check reads a directory and probes a
	// lock per daemon.
	MPSCheckInterval time.Duration
	// AllowMissingCheckpoint lets start-up go on without a checkpoint
	// although MIG instances exist, destroying them (see
	// prepare.WithMissingCheckpointAllowed).
	AllowMissingCheckpoint bool
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
	// StaleClaimInterval is how often checkpoint entries whose claim is
	// gone, and used by no pod on the node, are unprepared (see
	// CleanStaleClaims; default 1 min).
	StaleClaimInterval time.Duration
}

// RunNode reconciles the prepare checkpoint, starts the health monitor, the
// MPS watcher, the metrics endpoint and the gRPC health probe, and runs the
// plugin with them until ctx ends. A background error stops everything and
// is returned.
func RunNode(ctx context.Context, opts Options, node NodeOptions) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if node.MPSCheckInterval <= 0 {
		node.MPSCheckInterval = time.Second
	}
	if node.StaleClaimInterval <= 0 {
		node.StaleClaimInterval = time.Minute
	}
	m := metrics.New()
	opts.NVML = node.Hardware.NVML
	prepOpts := []prepare.Option{
		prepare.WithHardware(node.Hardware), prepare.WithNodeName(opts.NodeName), prepare.WithCDIRoot(node.CDIRoot),
		prepare.WithStateDir(node.StateDir), prepare.WithDriverRoot(node.DriverRoot), prepare.WithMetrics(m),
	}
	if node.AllowMissingCheckpoint {
		prepOpts = append(prepOpts, prepare.WithMissingCheckpointAllowed())
	}
	if opts.KubeClient != nil {
		recorder, stop, err := nodeEvents(ctx, opts.KubeClient)
		if err != nil {
			return err
		}
		defer stop()
		prepOpts = append(prepOpts, prepare.WithEvents(recorder))
	}
	// The node is discovered here once; the preparer, the health monitor
	// and the publication start from it, and follow the publication's
	// rediscoveries.
	inv, err := opts.NVML.Discover(ctx)
	if err := tnvml.Usable(err); err != nil {
		return fmt.Errorf("discover GPUs: %w", err)
	}
	if err != nil {
		klog.FromContext(ctx).Error(err, "Some GPUs are lost; serving the others")
	}
	opts.Inventory = &inv
	prepOpts = append(prepOpts, prepare.WithInventory(inv))
	preparer, err := prepare.New(ctx, prepOpts...)
	if err != nil {
		return err
	}
	opts.Preparer = preparer
	followers := []func(inventory.Node){preparer.SetInventory}
	services := []func(context.Context) error{
		// A crashed MPS daemon is restarted so that its clients can reconnect.
		func(ctx context.Context) error { return preparer.WatchMPS(ctx, node.MPSCheckInterval) },
		// A GPU whose MIG mode could not be switched off after its last
		// partition (a busy GPU) is retried until it can be used whole.
		func(ctx context.Context) error { return preparer.WatchMIGModeOff(ctx, 10*time.Second) },
		// A MIG instance an unprepare could not destroy is destroyed as
		// soon as it can be, freeing its placement.
		func(ctx context.Context) error { return preparer.WatchPendingDestroys(ctx, 10*time.Second) },
		// Entries the kubelet never unprepared do not hold devices forever.
		func(ctx context.Context) error {
			return watchStaleClaims(ctx, opts.KubeClient, opts.NodeName, preparer, node.StaleClaimInterval)
		},
	}
	if h, ok := opts.NVML.(tnvml.Health); ok {
		monitor := health.New(h, inv, health.WithMetrics(m), health.WithMIGDevices(preparer.MIGDeviceName))
		opts.Health = monitor
		followers = append(followers, monitor.SetInventory)
		services = append(services, monitor.Run)
	}
	opts.InventoryChanged = func(node inventory.Node) {
		for _, f := range followers {
			f(node)
		}
	}
	if tele, ok := opts.NVML.(tnvml.Telemetry); ok && node.ClaimMetricsInterval > 0 {
		var sampleOpts []claimusage.Option
		if opts.KubeClient != nil {
			sampleOpts = append(sampleOpts, claimusage.WithPodLookup(claimusage.ClaimPods(opts.KubeClient), claimPodRefresh))
			if node.IdleThreshold > 0 {
				sampleOpts = append(sampleOpts, claimusage.WithIdleReport(node.IdleThreshold,
					claimusage.LeaseIdleReport(opts.KubeClient, node.IdleReportNamespace, opts.NodeName)))
			}
		}
		sampler := claimusage.New(preparer, tele, sampleOpts...)
		m.Registry.MustRegister(sampler)
		opts.Preparer = sampledPreparer{Preparer: preparer, sampler: sampler}
		services = append(services, func(ctx context.Context) error { return sampler.Run(ctx, node.ClaimMetricsInterval) })
	}
	if node.MetricsAddress != "" {
		services = append(services, func(ctx context.Context) error { return m.Serve(ctx, node.MetricsAddress, node.MetricsServeOptions...) })
	}
	if node.HealthPort >= 0 {
		// NOT_SERVING until the kubelet registered the plugin and the
		// slices are published, so that a rolling update waits for it.
		probe := health.NewProbe()
		opts.Ready = func() { probe.SetServing(true) }
		services = append(services, func(ctx context.Context) error {
			return probe.Serve(ctx, net.JoinHostPort(node.HealthAddress, strconv.Itoa(node.HealthPort)))
		})
	}
	var wg sync.WaitGroup
	errs := make([]error, len(services))
	for i, f := range services {
		wg.Go(func() {
			if errs[i] = f(ctx); errs[i] != nil {
				cancel(errs[i])
			}
		})
	}
	err = Run(ctx, opts)
	if cause := context.Cause(ctx); err == nil && cause != nil && !errors.Is(cause, context.Canceled) {
		err = cause
	}
	cancel(nil)
	wg.Wait()
	return errors.Join(append([]error{err}, errs...)...)
}
