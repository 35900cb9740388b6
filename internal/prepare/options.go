package prepare

import (
	"github.com/tessera-gpu/tessera/internal/checkpoint"
	"github.com/tessera-gpu/tessera/internal/hardware"
	"github.com/tessera-gpu/tessera/internal/metrics"
	"github.com/tessera-gpu/tessera/pkg/inventory"
)

// Option configures a Preparer.
type Option func(*Preparer)

// WithHardware sets the node's hardware, real or simulated (required);
// its MPS daemons keep their directories under the state directory
// (sharing.MPSRoot).
func WithHardware(hw hardware.Node) Option {
	return func(p *Preparer) {
		p.nvml, p.mps, p.slicer, p.deviceNodes = hw.NVML, hw.MPS, hw.TimeSlicer, hw.DeviceNodes
	}
}

// WithNodeName sets the node name, which is the name of the node's pool.
func WithNodeName(name string) Option { return func(p *Preparer) { p.nodeName = name } }

// WithCDIRoot sets the CDI spec directory (default /var/run/cdi).
func WithCDIRoot(dir string) Option { return func(p *Preparer) { p.cdiRoot = dir } }

// WithDriverRoot sets where the NVIDIA driver's files live on the host
// (default /): the host paths of the device nodes in CDI specs are
// <root>/dev/..., since the container runtime reads the specs on the host.
func WithDriverRoot(dir string) Option { return func(p *Preparer) { p.driverRoot = dir } }

// WithStateDir sets the directory of the checkpoint and of the MPS daemons'
// pipe, log and /dev/shm directories (default /var/lib/tessera). Each
// daemon's /dev/shm is a tmpfs of its own, so it never fills this disk.
func WithStateDir(dir string) Option { return func(p *Preparer) { p.stateDir = dir } }

// WithMetrics sets the metrics to update.
func WithMetrics(m *metrics.Metrics) Option { return func(p *Preparer) { p.metrics = m } }

// WithInventory gives New the node as the caller discovered it
// (tnvml.DiscoverNode), so that the node is discovered once for everything
// that needs it (required). Claims on a GPU lost since can still be
// unprepared.
func WithInventory(node inventory.Node) Option { return func(p *Preparer) { p.inventory = &node } }

// WithCheckpointOptions configures the checkpoint store, e.g. with a
// failing disk in tests.
func WithCheckpointOptions(opts ...checkpoint.StoreOption) Option {
	return func(p *Preparer) { p.checkpointOpts = opts }
}

// WithMissingCheckpointAllowed lets start-up go on when the checkpoint is
// missing although MIG instances exist on the node; start-up then destroys
// them as owned by no claim. Without it, New refuses to start, so that a
// changed or unmounted state directory does not destroy every MIG instance
// on the node, including ones an admin made.
func WithMissingCheckpointAllowed() Option { return func(p *Preparer) { p.missingCheckpointOK = true } }

// WithStepHook calls hook after each step; an error from it abandons the
// operation on the spot, without rollback, as a crash would. For tests.
func WithStepHook(hook func(Step) error) Option { return func(p *Preparer) { p.hook = hook } }
