// Package plugin is Tessera's kubelet plugin: it publishes the node's GPUs as
// ResourceSlices through k8s.io/dynamic-resource-allocation/kubeletplugin and
// serves the kubelet's prepare and unprepare calls.
package plugin

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	draslices "k8s.io/dynamic-resource-allocation/resourceslice"
	"k8s.io/klog/v2"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tnvml "github.com/tessera-gpu/tessera/internal/nvml"
	"github.com/tessera-gpu/tessera/pkg/inventory"
	"github.com/tessera-gpu/tessera/pkg/resourceslice"
)

// Components are what the plugin is built from, besides its Config.
type Components struct {
	// KubeClient reaches the API server.
	KubeClient kubernetes.Interface
	// NVML is rediscovered every Config.RediscoverInterval.
	NVML tnvml.Library
	// Inventory is the node as discovered at start (tnvml.DiscoverNode).
	Inventory inventory.Node
	// Preparer prepares and unprepares claims (required). With
	// Config.Slices.WithdrawBlocked it must be a PreparedLister: the slices
	// are republished after every prepare and unprepare, without the
	// devices that the prepared ones block.
	Preparer Preparer
	// Health, when set, supplies the taints of unhealthy GPUs' devices; the
	// slices are republished whenever they change.
	Health HealthSource
	// InventoryChanged, when set, is called with every changed inventory
	// after it was published, so that everything else follows the node.
	InventoryChanged func(inventory.Node)
	// Ready, when set, is called once the kubelet has registered the
	// plugin and its slices are published: only then can it serve pods.
	Ready func()
}

// running is what Run runs with.
type running struct {
	Config
	Components
	// slices are Config's publication choices (Config.SliceOptions).
	slices resourceslice.Options
}

// HealthSource reports device taints of unhealthy GPUs.
type HealthSource interface {
	Taints() map[string][]resourceapi.DeviceTaint
	Changed() <-chan struct{}
}

// Preparer turns allocated claims into CDI devices and back.
type Preparer interface {
	Prepare(ctx context.Context, claim *resourceapi.ResourceClaim) kubeletplugin.PrepareResult
	Unprepare(ctx context.Context, claim kubeletplugin.NamespacedObject) error
}

// PreparedLister names the devices prepared on the node (see
// prepare.Preparer.PreparedDevices).
type PreparedLister interface {
	PreparedDevices(ctx context.Context) (prepared map[string]bool, release func(), err error)
	CheckpointChanged() bool
}

// checkpointPoll is how often, when blocked devices are withdrawn, the
// plugin checks whether another instance of it (a rolling update) changed
// the checkpoint, to publish what the checkpoint now says. Both instances'
// publication controllers manage the same slices and write back their own
// view 30 s after any change (resourceslice.DefaultSyncDelay): each view
// must follow the checkpoint on disk well before that. The check is a stat
// unless the file changed.
const checkpointPoll = 250 * time.Millisecond

// preparedReadTimeout bounds reading the checkpoint for a publication; the
// next poll tries again.
const preparedReadTimeout = 5 * time.Second

// allocatedSyncTimeout bounds the wait for the first list of allocated
// claims; past it the plugin stops (its RBAC is wrong) and is restarted.
const allocatedSyncTimeout = 2 * time.Minute

// Driver implements kubeletplugin.DRAPlugin.
type Driver struct {
	opts   running
	helper *kubeletplugin.Helper
	// published is the inventory last published, to republish only on change.
	published *inventory.Node
	// handed is what the publication controller was last given (handOver).
	handed *draslices.DriverResources
	// prepared lists the prepared devices when blocked ones are withdrawn
	// (nil otherwise); publishedPrepared is its answer last published.
	prepared          PreparedLister
	publishedPrepared map[string]bool
	// publishedAllocated are the allocated devices last published.
	publishedAllocated map[string]bool
	// allocated follows the claims allocated on the node when blocked
	// devices are withdrawn: none of their devices is ever withdrawn.
	allocated *allocatedClaims
	// preparedChanged asks Run's loop to republish after a prepare or
	// unprepare (one pending request is enough).
	preparedChanged chan struct{}
	// republished orders unprepares before what follows them (see
	// UnprepareResourceClaims).
	republished republishTracker

	// mu guards what the kubelet's health watch reads.
	mu sync.Mutex
	// publishedTaints are the health taints last published.
	publishedTaints map[string][]resourceapi.DeviceTaint
	// devices are the device names last published.
	devices []string
	// healthChanged is closed (and replaced) when publishedTaints change.
	healthChanged chan struct{}
	// cancel stops the process when a background error cannot be recovered.
	cancel context.CancelCauseFunc
}

var _ kubeletplugin.DRAPlugin = (*Driver)(nil)

// Run starts the plugin and serves until ctx ends.
func Run(ctx context.Context, cfg Config, parts Components) error {
	logger := klog.FromContext(ctx)
	ctx, cancel := context.WithCancelCause(ctx)
	// What Run starts in the background ends before it returns.
	var background errgroup.Group
	defer func() {
		cancel(nil)
		_ = background.Wait()
	}()
	opts := running{Config: cfg, Components: parts, slices: cfg.SliceOptions()}
	if opts.RediscoverInterval <= 0 {
		opts.RediscoverInterval = 30 * time.Second
	}
	if opts.Preparer == nil {
		return errors.New("kubelet plugin: no preparer")
	}
	d := &Driver{opts: opts, cancel: cancel, healthChanged: make(chan struct{}), preparedChanged: make(chan struct{}, 1)}
	if opts.slices.WithdrawBlocked {
		lister, ok := opts.Preparer.(PreparedLister)
		if !ok {
			return errors.New("kubelet plugin: withdrawing blocked devices needs a preparer that lists its prepared devices")
		}
		d.prepared = lister
		d.allocated = newAllocatedClaims(opts.KubeClient, opts.NodeName, d.republishPrepared)
		background.Go(func() error { d.allocated.run(ctx); return nil })
		syncCtx, cancelSync := context.WithTimeout(ctx, allocatedSyncTimeout)
		err := d.allocated.waitSynced(syncCtx)
		cancelSync()
		if err != nil {
			if ctx.Err() != nil {
				return stopCause(ctx)
			}
			return err
		}
	}

	node := opts.Inventory
	logger.Info("Discovered GPUs", "count", len(node.GPUs), "driverVersion", node.DriverVersion)

	helperOpts := []kubeletplugin.Option{
		kubeletplugin.DriverName(gpuapi.DriverName),
		kubeletplugin.NodeName(opts.NodeName),
		kubeletplugin.KubeClient(opts.KubeClient),
		kubeletplugin.PluginDataDirectoryPath(opts.PluginDataDir),
		kubeletplugin.RegistrarDirectoryPath(opts.RegistrarDir),
	}
	if opts.PodUID != "" {
		helperOpts = append(helperOpts, kubeletplugin.RollingUpdate(opts.PodUID))
	}
	// The helper's RegistrationStatus is not safe to poll while the kubelet
	// registers; watching the kubelet's call is.
	registered := make(chan struct{})
	helperOpts = append(helperOpts, kubeletplugin.GRPCInterceptor(registrationWatch(registered)))
	helper, err := kubeletplugin.Start(ctx, d, helperOpts...)
	if err != nil {
		return fmt.Errorf("start kubelet plugin: %w", err)
	}
	d.helper = helper
	defer helper.Stop()

	if err := d.publish(ctx, node); err != nil {
		if ctx.Err() != nil {
			// Stopped while starting: not a failure to publish.
			return stopCause(ctx)
		}
		return err
	}
	ticker := time.NewTicker(opts.RediscoverInterval)
	defer ticker.Stop()
	var checkpointTick <-chan time.Time
	if d.prepared != nil {
		poll := time.NewTicker(checkpointPoll)
		defer poll.Stop()
		checkpointTick = poll.C
	}
	// Registration happens when the kubelet gets to it; the slices are
	// published by now.
	notReady := registered
	var healthChanged <-chan struct{}
	if opts.Health != nil {
		healthChanged = opts.Health.Changed()
	}
	for {
		select {
		case <-ctx.Done():
			return stopCause(ctx)
		case <-ticker.C:
			node, err := opts.NVML.Discover(ctx)
			if tnvml.Usable(err) != nil {
				logger.Error(err, "Rediscovering GPUs failed; keeping the published slices")
				continue
			}
			if err != nil {
				// A GPU lost since it was published stays published (its
				// devices may be allocated, and hiding them would free
				// their counters); the health monitor taints it.
				node = keepLost(node, d.published, err)
			}
			changed := d.published == nil || !reflect.DeepEqual(*d.published, node)
			if err := d.publish(ctx, node); err != nil {
				logger.Error(err, "Republishing slices failed")
				continue
			}
			if changed && opts.InventoryChanged != nil {
				opts.InventoryChanged(node)
			}
		case <-notReady:
			notReady = nil
			logger.Info("Registered with the kubelet and published; ready")
			if opts.Ready != nil {
				opts.Ready()
			}
		case <-healthChanged:
			if err := d.publish(ctx, *d.published); err != nil {
				logger.Error(err, "Republishing slices with changed device health failed")
			}
		case <-checkpointTick:
			if !d.prepared.CheckpointChanged() {
				continue
			}
			if err := d.publish(ctx, *d.published); err != nil {
				logger.Error(err, "Republishing slices after the checkpoint changed failed")
			}
		case <-d.preparedChanged:
			// Every request made before this point sees its change in what
			// is published now: the prepared devices are read after it.
			asked := d.republished.asked()
			if err := d.publish(ctx, *d.published); err != nil {
				logger.Error(err, "Republishing slices after a prepare or unprepare failed")
				continue
			}
			d.republished.done(asked)
		}
	}
}

// keepLost adds to node the published GPUs that discovery failed on.
func keepLost(node inventory.Node, published *inventory.Node, err error) inventory.Node {
	var partial *tnvml.PartialError
	if published == nil || !errors.As(err, &partial) {
		return node
	}
	for _, gpu := range published.GPUs {
		if _, lost := partial.Failed[gpu.Index]; lost {
			node.GPUs = append(node.GPUs, gpu)
		}
	}
	node.Sort()
	return node
}

// registrationWatch closes registered when the kubelet reports that it
// registered the plugin.
func registrationWatch(registered chan struct{}) grpc.UnaryServerInterceptor {
	var once sync.Once
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		resp, err := handler(ctx, req)
		if status, ok := req.(*registerapi.RegistrationStatus); ok && err == nil && status.PluginRegistered {
			once.Do(func() { close(registered) })
		}
		return resp, err
	}
}

// publish hands the node's slices to the publication controller when the
// inventory differs from what was last published.
func (d *Driver) publish(ctx context.Context, node inventory.Node) error {
	opts := d.opts.slices
	if d.opts.Health != nil {
		opts.Taints = d.opts.Health.Taints()
	}
	if d.prepared != nil {
		// The checkpoint as it is on disk, which another plugin instance
		// may have changed, and never without an allocated device.
		readCtx, cancel := context.WithTimeout(ctx, preparedReadTimeout)
		prepared, release, err := d.prepared.PreparedDevices(readCtx)
		cancel()
		if err != nil {
			return err
		}
		// The checkpoint stays as read until the API server holds what
		// is computed from it (PreparedDevices says why).
		defer release()
		opts.Prepared, opts.Allocated = prepared, d.allocated.Devices()
	}
	d.mu.Lock()
	unchanged := d.published != nil && reflect.DeepEqual(*d.published, node) && reflect.DeepEqual(d.publishedTaints, opts.Taints) &&
		reflect.DeepEqual(d.publishedPrepared, opts.Prepared) && reflect.DeepEqual(d.publishedAllocated, opts.Allocated)
	d.mu.Unlock()
	if unchanged {
		return nil
	}
	res := resourceslice.Build(d.opts.NodeName, node, opts)
	if err := d.handOver(ctx, res); err != nil {
		return fmt.Errorf("publish resource slices: %w", err)
	}
	var names []string
	for _, s := range res.Pools[d.opts.NodeName].Slices {
		for _, dev := range s.Devices {
			names = append(names, dev.Name)
		}
	}
	devices := len(names)
	d.published = &node
	d.mu.Lock()
	d.publishedPrepared = opts.Prepared
	d.publishedAllocated = opts.Allocated
	d.publishedTaints = opts.Taints
	d.devices = names
	close(d.healthChanged)
	d.healthChanged = make(chan struct{})
	d.mu.Unlock()
	klog.FromContext(ctx).Info("Published resource slices", "gpus", len(node.GPUs), "devices", devices, "slices", len(res.Pools[d.opts.NodeName].Slices),
		"withdrawBlocked", d.prepared != nil, "prepared", len(opts.Prepared))
	return nil
}

// PrepareResourceClaims prepares each claim independently: one claim's
// failure is reported in its own result and never stops the others.
func (d *Driver) PrepareResourceClaims(ctx context.Context, claims []*resourceapi.ResourceClaim) (map[types.UID]kubeletplugin.PrepareResult, error) {
	out := make(map[types.UID]kubeletplugin.PrepareResult, len(claims))
	for _, claim := range claims {
		out[claim.UID] = d.opts.Preparer.Prepare(ctx, claim)
	}
	d.republishPrepared()
	return out, nil
}

// republishPrepared asks Run's loop to republish when blocked devices are
// withdrawn: a prepare withdraws what it blocks, an unprepare brings it back.
// Withdrawing is never needed for correctness (the counters already keep the
// allocator off a blocked device), so the call does not wait for it.
func (d *Driver) republishPrepared() {
	if d.prepared == nil {
		return
	}
	select {
	case d.preparedChanged <- struct{}{}:
	default:
	}
}

// UnprepareResourceClaims unprepares each claim independently, and returns
// once the slices published after it are at the API server (bounded by
// unprepareRepublishTimeout).
//
// Withdrawal leaves out what a prepared device blocks, which is safe only
// while that device stays allocated. A publication computed while it was
// still prepared may reach the API server late, after its claim was
// deallocated and a blocked device allocated to another claim, and hide that
// allocated device (whose counters the allocator then counts free). The
// kubelet finishes the pod, and the claim is deallocated, only after this
// call returns, so waiting here for a publication that no longer withdraws
// for the claim puts every stale one before any new allocation.
func (d *Driver) UnprepareResourceClaims(ctx context.Context, claims []kubeletplugin.NamespacedObject) (map[types.UID]error, error) {
	out := make(map[types.UID]error, len(claims))
	for _, claim := range claims {
		out[claim.UID] = d.opts.Preparer.Unprepare(ctx, claim)
	}
	if d.prepared == nil {
		return out, nil
	}
	ask := d.republished.ask()
	d.republishPrepared() // Run's loop covers ask in the next publication
	ctx, cancel := context.WithTimeout(ctx, unprepareRepublishTimeout)
	defer cancel()
	if err := d.republished.wait(ctx, ask); err != nil {
		klog.FromContext(ctx).Error(err, "The slices did not follow an unprepare in time; returning anyway")
	}
	return out, nil
}

// HandleError is called by the helper for errors in background work such as
// slice publication. Recoverable errors are logged; any other stops the
// plugin so that it restarts cleanly.
func (d *Driver) HandleError(ctx context.Context, err error, msg string) {
	logger := klog.FromContext(ctx)
	if errors.Is(err, kubeletplugin.ErrRecoverable) {
		logger.Error(err, msg)
		return
	}
	logger.Error(err, msg, "fatal", true)
	d.cancel(fmt.Errorf("%s: %w", msg, err))
}

// stopCause is nil when ctx was cancelled plainly (shutdown), else the
// background error that stopped the plugin.
func stopCause(ctx context.Context) error {
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	return nil
}
