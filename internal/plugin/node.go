package plugin

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"time"

	"golang.org/x/sync/errgroup"
	"k8s.io/client-go/kubernetes"

	"github.com/tessera-gpu/tessera/internal/claimusage"
	"github.com/tessera-gpu/tessera/internal/hardware"
	"github.com/tessera-gpu/tessera/internal/health"
	"github.com/tessera-gpu/tessera/internal/metrics"
	tnvml "github.com/tessera-gpu/tessera/internal/nvml"
	"github.com/tessera-gpu/tessera/internal/pidns"
	"github.com/tessera-gpu/tessera/internal/prepare"
	"github.com/tessera-gpu/tessera/pkg/inventory"
)

// RunNode reconciles the prepare checkpoint, starts the health monitor, the
// MPS watcher, the metrics endpoint and the gRPC health probe, and runs the
// plugin with them on hw until ctx ends. cfg must be valid (Config.Validate).
// The first error of any of them stops all and is returned.
func RunNode(ctx context.Context, cfg Config, client kubernetes.Interface, hw hardware.Node) error {
	if cfg.MPSCheckInterval <= 0 {
		cfg.MPSCheckInterval = time.Second
	}
	if cfg.StaleClaimInterval <= 0 {
		cfg.StaleClaimInterval = time.Minute
	}
	hostPIDs, err := openHostProc(cfg.HostProc)
	if err != nil {
		return err
	}
	m := metrics.New()
	parts := Components{KubeClient: client, NVML: hw.NVML}
	prepOpts := []prepare.Option{
		prepare.WithHardware(hw), prepare.WithNodeName(cfg.NodeName), prepare.WithCDIRoot(cfg.CDIRoot),
		prepare.WithStateDir(cfg.StateDir), prepare.WithDriverRoot(cfg.DriverRoot), prepare.WithMetrics(m),
	}
	if cfg.AllowMissingCheckpoint {
		prepOpts = append(prepOpts, prepare.WithMissingCheckpointAllowed())
	}
	if client != nil {
		recorder, stop, err := nodeEvents(ctx, client)
		if err != nil {
			return err
		}
		defer stop()
		prepOpts = append(prepOpts, prepare.WithEvents(recorder))
	}
	// The node is discovered here once; the preparer, the health monitor
	// and the publication start from it, and follow the publication's
	// rediscoveries.
	inv, err := tnvml.DiscoverNode(ctx, hw.NVML)
	if err != nil {
		return err
	}
	parts.Inventory = inv
	prepOpts = append(prepOpts, prepare.WithInventory(inv))
	preparer, err := prepare.New(ctx, prepOpts...)
	if err != nil {
		return err
	}
	parts.Preparer = preparer
	followers := []func(inventory.Node){preparer.SetInventory}
	services := []func(context.Context) error{
		// A crashed MPS daemon is restarted so that its clients can reconnect.
		func(ctx context.Context) error { return preparer.WatchMPS(ctx, cfg.MPSCheckInterval) },
		// A GPU whose MIG mode could not be switched off after its last
		// partition (a busy GPU) is retried until it can be used whole.
		func(ctx context.Context) error { return preparer.WatchMIGModeOff(ctx, 10*time.Second) },
		// A MIG instance an unprepare could not destroy is destroyed as
		// soon as it can be, freeing its placement.
		func(ctx context.Context) error { return preparer.WatchPendingDestroys(ctx, 10*time.Second) },
		// Entries the kubelet never unprepared do not hold devices forever.
		func(ctx context.Context) error {
			return watchStaleClaims(ctx, client, cfg.NodeName, preparer, cfg.StaleClaimInterval)
		},
	}
	if h, ok := hw.NVML.(tnvml.Health); ok {
		monitor := health.New(h, inv, health.WithMetrics(m), health.WithMIGDevices(preparer.MIGDeviceName))
		parts.Health = monitor
		followers = append(followers, monitor.SetInventory)
		services = append(services, monitor.Run)
	}
	parts.InventoryChanged = func(node inventory.Node) {
		for _, f := range followers {
			f(node)
		}
	}
	if tele, ok := hw.NVML.(tnvml.Telemetry); ok && cfg.ClaimMetricsInterval > 0 {
		var sampleOpts []claimusage.Option
		if client != nil {
			sampleOpts = append(sampleOpts, claimusage.WithPodLookup(claimusage.ClaimPods(client), claimPodRefresh))
			if cfg.IdleThreshold > 0 {
				sampleOpts = append(sampleOpts, claimusage.WithIdleReport(cfg.IdleThreshold,
					claimusage.LeaseIdleReport(client, cfg.IdleReportNamespace, cfg.NodeName)))
			}
		}
		if hostPIDs != nil {
			sampleOpts = append(sampleOpts, claimusage.WithHostPIDs(hostPIDs))
		}
		sampler := claimusage.New(preparer, tele, sampleOpts...)
		m.Registry.MustRegister(sampler)
		parts.Preparer = sampledPreparer{Preparer: preparer, sampler: sampler}
		services = append(services, func(ctx context.Context) error { return sampler.Run(ctx, cfg.ClaimMetricsInterval) })
	}
	if cfg.MetricsAddress != "" {
		serveOpts := cfg.metricsServeOptions(client)
		services = append(services, func(ctx context.Context) error { return m.Serve(ctx, cfg.MetricsAddress, serveOpts...) })
	}
	if cfg.HealthPort >= 0 {
		// NOT_SERVING until the kubelet registered the plugin and the
		// slices are published, so that a rolling update waits for it.
		probe := health.NewProbe()
		parts.Ready = func() { probe.SetServing(true) }
		services = append(services, func(ctx context.Context) error {
			return probe.Serve(ctx, net.JoinHostPort(cfg.HealthAddress, strconv.Itoa(cfg.HealthPort)))
		})
	}
	g, ctx := errgroup.WithContext(ctx)
	for _, f := range services {
		g.Go(func() error { return f(ctx) })
	}
	g.Go(func() error { return Run(ctx, cfg, parts) })
	return g.Wait()
}

// openHostProc opens the host's /proc that NVML's PIDs are translated
// through, checking that it is one this process finds itself in; nil
// without one.
func openHostProc(path string) (*pidns.HostProc, error) {
	if path == "" {
		return nil, nil
	}
	h, err := pidns.New(path)
	if err == nil {
		err = h.Check()
	}
	if err != nil {
		return nil, fmt.Errorf("--host-proc=%s: %w", path, err)
	}
	return h, nil
}
