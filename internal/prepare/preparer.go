// Package prepare turns allocated ResourceClaims into devices a container can
// use, and back: it creates and destroys MIG instances through NVML, starts
// and stops MPS control daemons for shared GPUs, applies time slicing, writes
// one CDI spec per claim, and records every claim in a crash-safe checkpoint
// before and after its devices are made. On start it reconciles the
// checkpoint with what NVML, the CDI root and the MPS daemons report.
package prepare

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/klog/v2"

	configapi "github.com/tessera-gpu/tessera/api/config/v1alpha1"
	tcdi "github.com/tessera-gpu/tessera/internal/cdi"
	"github.com/tessera-gpu/tessera/internal/checkpoint"
	"github.com/tessera-gpu/tessera/internal/hardware"
	"github.com/tessera-gpu/tessera/internal/metrics"
	tnvml "github.com/tessera-gpu/tessera/internal/nvml"
	"github.com/tessera-gpu/tessera/internal/sharing"
	"github.com/tessera-gpu/tessera/pkg/inventory"
	"github.com/tessera-gpu/tessera/pkg/partition"
)

// Preparer prepares and unprepares claims on one node. It is safe for
// concurrent use: claims are serialised per UID, MIG and daemon changes per
// GPU, checkpoint writes globally.
type Preparer struct {
	nvml  tnvml.Library
	cdi   *tcdi.Writer
	store *checkpoint.Store
	mps   sharing.MPSControl
	// slicer sets time slices and devices gives the CDI specs' device
	// nodes, as the hardware (hardware.Node) has them.
	slicer      sharing.TimeSlicer
	deviceNodes hardware.DeviceNodes
	metrics     *metrics.Metrics
	events      events.EventRecorder
	hook        func(Step) error
	nodeName    string
	cdiRoot     string
	driverRoot  string
	stateDir    string

	// checkpointOpts configure the checkpoint store.
	checkpointOpts []checkpoint.StoreOption
	// missingCheckpointOK lets start-up go on without a checkpoint although
	// MIG instances exist (they are then destroyed as nobody's).
	missingCheckpointOK bool

	// inventory, when set, is the node as discovered by the caller.
	inventory *inventory.Node

	// invMu guards devices and gpus, which follow the inventory.
	invMu sync.RWMutex
	// devices maps this node's device names to what they are.
	devices map[string]deviceInfo
	// gpus holds every GPU seen since start: one that vanished keeps its
	// state, so that claims on it can be unprepared.
	gpus map[int]*gpuState

	claims keyedMutex

	// migOffMu guards migOff: the GPUs whose MIG mode is to be switched
	// off in the background, with the last reason it failed.
	migOffMu sync.Mutex
	migOff   map[int]error

	// pendingMu guards pendingDestroys: the MIG instances unprepares left,
	// to be destroyed in the background (see destroy_later.go), as last
	// read or written under the state lock.
	pendingMu       sync.Mutex
	pendingDestroys []pendingDestroy
	// pendingDestroyFault, when set, fails writes of their file (tests).
	pendingDestroyFault func(instances int) error

	// mu guards cp and serialises its writes.
	mu sync.Mutex
	cp *checkpoint.Checkpoint
	// holder is the operation holding the state lock, for the errors of
	// those that wait too long for it.
	holder atomic.Pointer[lockHolder]
}

type deviceInfo struct {
	gpu    inventory.GPU
	device partition.Device
	// counters are the capacities of the GPU's counter set.
	counters map[string]int64
}

// gpuState serialises the changes that concern one physical GPU: its MIG
// mode and instances, its MPS daemon and its time slice.
type gpuState struct {
	sync.Mutex
	gpu inventory.GPU
}

// Option configures a Preparer.
type Option func(*Preparer)

// WithHardware sets the node's hardware, real or simulated (required, or
// each of its parts with WithNVML, WithMPS, WithTimeSlicer and
// WithDeviceNodes).
func WithHardware(hw hardware.Node) Option {
	return func(p *Preparer) {
		p.nvml, p.mps, p.slicer, p.deviceNodes = hw.NVML, hw.MPS, hw.TimeSlicer, hw.DeviceNodes
	}
}

// WithNVML sets the NVML library.
func WithNVML(lib tnvml.Library) Option { return func(p *Preparer) { p.nvml = lib } }

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

// WithMPS sets the MPS daemon control, whose daemons' directories are
// under the state directory (sharing.MPSRoot).
func WithMPS(m sharing.MPSControl) Option { return func(p *Preparer) { p.mps = m } }

// WithTimeSlicer sets how time slices are applied.
func WithTimeSlicer(t sharing.TimeSlicer) Option { return func(p *Preparer) { p.slicer = t } }

// WithDeviceNodes sets where the CDI specs' device nodes come from.
func WithDeviceNodes(d hardware.DeviceNodes) Option { return func(p *Preparer) { p.deviceNodes = d } }

// WithMetrics sets the metrics to update.
func WithMetrics(m *metrics.Metrics) Option { return func(p *Preparer) { p.metrics = m } }

// WithInventory gives New the node as the caller discovered it, so that
// the node is discovered once for everything that needs it; without it New
// discovers the node itself.
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

// New discovers the node's GPUs, loads the checkpoint and reconciles it
// with the node's state. A checkpoint that cannot be read stops New with an
// error before anything is destroyed.
func New(ctx context.Context, opts ...Option) (*Preparer, error) {
	p := &Preparer{cdiRoot: "/var/run/cdi", driverRoot: "/", stateDir: "/var/lib/tessera", migOff: map[int]error{}}
	for _, o := range opts {
		o(p)
	}
	switch {
	case p.nvml == nil:
		return nil, errors.New("prepare: no NVML library")
	case p.mps == nil:
		return nil, errors.New("prepare: no MPS control")
	case p.slicer == nil:
		return nil, errors.New("prepare: no time slicer")
	case p.deviceNodes == nil:
		return nil, errors.New("prepare: no device nodes")
	}
	var err error
	if p.cdi, err = tcdi.New(tcdi.WithRoot(p.cdiRoot), tcdi.WithDriverRoot(p.driverRoot)); err != nil {
		return nil, err
	}
	if p.store, err = checkpoint.NewStore(p.stateDir, p.checkpointOpts...); err != nil {
		return nil, err
	}
	// Held through reconciling: another plugin instance (a rolling
	// update) may be serving claims meanwhile.
	unlock, err := p.store.Lock(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	exists, err := p.store.Exists()
	if err != nil {
		return nil, err
	}
	if p.cp, err = p.store.Load(); err != nil {
		return nil, fmt.Errorf("load checkpoint (refusing to start so that no prepared device is destroyed): %w", err)
	}
	var node inventory.Node
	if p.inventory != nil {
		node = *p.inventory
	} else {
		node, err = p.nvml.Discover(ctx)
		if tnvml.Usable(err) != nil {
			return nil, fmt.Errorf("discover GPUs: %w", err)
		}
		if err != nil {
			// Claims on a lost GPU can still be unprepared; the rest serve.
			klog.FromContext(ctx).Error(err, "Some GPUs are lost; preparing on the others")
		}
	}
	if !exists {
		if err := p.checkNoCheckpointIsNewNode(ctx, node); err != nil {
			return nil, err
		}
		// From now on a missing checkpoint means a lost state directory.
		if err := p.store.Save(p.cp); err != nil {
			return nil, err
		}
	}
	p.gpus = map[int]*gpuState{}
	p.SetInventory(node)
	if _, err := p.loadPendingDestroys(); err != nil {
		// What it lists would be forgotten, and its placements offered.
		return nil, err
	}
	if err := p.checkRecordedGPUs(ctx, node); err != nil {
		return nil, fmt.Errorf("record GPUs' NVML indexes as discovered: %w", err)
	}
	if err := p.reconcile(ctx); err != nil {
		// What could not be cleaned up stays in the checkpoint, and the
		// kubelet's retries or the next start try again; refusing to start
		// would stop every other claim from being served.
		klog.FromContext(ctx).Error(err, "Reconciling the checkpoint with the node left work undone")
	}
	return p, nil
}

// checkNoCheckpointIsNewNode refuses a start without checkpoint on a node
// that has MIG instances, unless allowed: reconciling would destroy them
// all, and a changed or unmounted state directory is a likelier cause than
// a node whose instances nobody needs.
func (p *Preparer) checkNoCheckpointIsNewNode(ctx context.Context, node inventory.Node) error {
	if p.missingCheckpointOK {
		return nil
	}
	var found []string
	for _, gpu := range node.GPUs {
		if !gpu.MIG.Capable || !gpu.MIG.Enabled {
			continue
		}
		migs, err := p.nvml.MIGDevices(ctx, gpu.Index)
		if err != nil {
			return fmt.Errorf("list MIG devices of GPU %d (checking a start without checkpoint): %w", gpu.Index, err)
		}
		if len(migs) > 0 {
			found = append(found, fmt.Sprintf("GPU %d: %d", gpu.Index, len(migs)))
		}
	}
	if len(found) == 0 {
		return nil
	}
	return fmt.Errorf("checkpoint %s does not exist but the node has MIG instances (%s): refusing to start, because start-up would destroy them all; "+
		"check that the state directory is the one the plugin used before, or, to destroy every MIG instance no claim owns, start once with --allow-missing-checkpoint",
		p.store.Path(), strings.Join(found, ", "))
}

// SetInventory makes the node's current GPUs the ones claims can be
// prepared on: a GPU that appeared becomes usable, one that vanished takes
// no new claims (claims on it can still be unprepared), and a changed one
// (e.g. its MIG mode) is prepared as it is now.
func (p *Preparer) SetInventory(node inventory.Node) {
	devices := map[string]deviceInfo{}
	for _, gpu := range node.GPUs {
		g := partition.Build(gpu, partition.Options{})
		for _, d := range g.Devices {
			devices[d.Name] = deviceInfo{gpu: gpu, device: d, counters: g.Counters}
		}
	}
	p.invMu.Lock()
	defer p.invMu.Unlock()
	p.devices = devices
	for _, gpu := range node.GPUs {
		g, ok := p.gpus[gpu.Index]
		if !ok {
			p.gpus[gpu.Index] = &gpuState{gpu: gpu}
			continue
		}
		g.Lock()
		g.gpu = gpu
		g.Unlock()
	}
}

// gpu returns the state of a GPU seen since start, nil for none.
func (p *Preparer) gpu(index int) *gpuState {
	p.invMu.RLock()
	defer p.invMu.RUnlock()
	return p.gpus[index]
}

// device returns what a device of the current inventory is.
func (p *Preparer) device(name string) (deviceInfo, bool) {
	p.invMu.RLock()
	defer p.invMu.RUnlock()
	info, ok := p.devices[name]
	return info, ok
}

func (p *Preparer) mpsRoot() string { return sharing.MPSRoot(p.stateDir) }

// Prepare prepares one claim. Errors, including bad opaque config, go into
// the claim's result; other claims are unaffected.
func (p *Preparer) Prepare(ctx context.Context, claim *resourceapi.ResourceClaim) kubeletplugin.PrepareResult {
	logger := klog.FromContext(ctx)
	start := time.Now()
	res, kind, err := p.prepare(ctx, claim)
	p.metrics.ObservePrepare(kind, time.Since(start), err)
	if err != nil {
		err = fmt.Errorf("prepare claim %s/%s: %w", claim.Namespace, claim.Name, err)
		logger.Error(err, "Preparing claim failed", "claim", klog.KObj(claim))
		return kubeletplugin.PrepareResult{Err: err}
	}
	logger.V(2).Info("Prepared claim", "claim", klog.KObj(claim), "devices", len(res.Devices), "duration", time.Since(start))
	return res
}

// Unprepare tears down what Prepare made. Unpreparing an unknown claim is
// not an error.
func (p *Preparer) Unprepare(ctx context.Context, claim kubeletplugin.NamespacedObject) error {
	logger := klog.FromContext(ctx)
	start := time.Now()
	kind, err := p.unprepare(ctx, string(claim.UID))
	p.metrics.ObserveUnprepare(kind, time.Since(start), err)
	if err != nil {
		err = fmt.Errorf("unprepare claim %s: %w", claim.String(), err)
		logger.Error(err, "Unpreparing claim failed", "claim", claim.NamespacedName)
		return err
	}
	logger.V(2).Info("Unprepared claim", "claim", claim.NamespacedName, "duration", time.Since(start))
	return nil
}

func (p *Preparer) prepare(ctx context.Context, claim *resourceapi.ResourceClaim) (kubeletplugin.PrepareResult, string, error) {
	uid := string(claim.UID)
	unlockClaim, err := p.lockClaim(ctx, uid)
	if err != nil {
		return kubeletplugin.PrepareResult{}, "none", err
	}
	defer unlockClaim()
	unlock, err := p.lockState(ctx, "prepare claim "+uid)
	if err != nil {
		return kubeletplugin.PrepareResult{}, "none", err
	}
	defer unlock()
	if c := p.claim(uid); c != nil {
		if c.State == checkpoint.PrepareCompleted {
			if err := checkAllocation(claim, c); err != nil {
				return kubeletplugin.PrepareResult{}, kindOf(c), err
			}
			if _, err := p.reviveMIG(ctx, c); err != nil {
				return kubeletplugin.PrepareResult{}, kindOf(c), err
			}
			return result(c), kindOf(c), nil
		}
		// An earlier attempt stopped half-way: undo it and start over.
		if err := p.teardown(ctx, c); err != nil {
			return kubeletplugin.PrepareResult{}, kindOf(c), fmt.Errorf("roll back an earlier attempt: %w", err)
		}
	}
	devices, err := p.plan(claim)
	if err != nil {
		return kubeletplugin.PrepareResult{}, "none", err
	}
	if len(devices) == 0 {
		// Only other drivers' devices: nothing to make or remember.
		return kubeletplugin.PrepareResult{Devices: []kubeletplugin.Device{}}, "none", nil
	}
	if err := p.checkNotHeld(uid, devices); err != nil {
		return kubeletplugin.PrepareResult{}, "none", err
	}
	c := &checkpoint.Claim{UID: uid, Namespace: claim.Namespace, Name: claim.Name, State: checkpoint.PrepareStarted, Devices: devices}
	kind := kindOf(c)
	if err := p.update(func(cp *checkpoint.Checkpoint) { cp.Claims[uid] = c.DeepCopy() }); err != nil {
		return kubeletplugin.PrepareResult{}, kind, err
	}
	if err := p.step(StepPrepareRecorded); err != nil {
		return kubeletplugin.PrepareResult{}, kind, err
	}
	if err := p.make(ctx, c); err != nil {
		if isAbandoned(err) {
			return kubeletplugin.PrepareResult{}, kind, err
		}
		// c knows what was made even where recording it failed (a MIG
		// instance whose record could not be written must not leak).
		if rerr := p.teardown(ctx, c); rerr != nil {
			err = errors.Join(err, fmt.Errorf("roll back: %w", rerr))
		}
		return kubeletplugin.PrepareResult{}, kind, err
	}
	return result(c), kind, nil
}

// make creates the claim's devices and its CDI spec, recording progress in
// the checkpoint. c is the caller's copy and is updated along.
func (p *Preparer) make(ctx context.Context, c *checkpoint.Claim) error {
	for i := range c.Devices {
		d := &c.Devices[i]
		if d.AdminAccess {
			// Nothing is set up on the GPU: see adminAccess.
			continue
		}
		if d.MIG == nil {
			if err := p.migModeOffForWhole(ctx, d); err != nil {
				return err
			}
		}
		if d.MIG != nil {
			m, err := p.createMIG(ctx, d)
			if err != nil {
				return err
			}
			d.MIG.Created, d.MIG.GPUInstanceID, d.MIG.ComputeInstanceID, d.MIG.UUID = true, m.GPUInstanceID, m.ComputeInstanceID, m.UUID
			if err := p.update(func(cp *checkpoint.Checkpoint) { cp.Claims[c.UID].Devices[i].MIG = ptrCopy(d.MIG) }); err != nil {
				return err
			}
			if err := p.step(StepMIGRecorded); err != nil {
				return err
			}
		}
		if err := p.startTimeSlicing(ctx, d); err != nil {
			return err
		}
	}
	if d, ok := p.daemon(c); ok {
		if err := p.mps.Start(ctx, d); err != nil {
			return err
		}
		if err := p.step(StepMPSStarted); err != nil {
			return err
		}
	}
	spec, err := p.cdiClaim(c)
	if err != nil {
		return err
	}
	ids, err := p.cdi.Write(spec)
	if err != nil {
		return err
	}
	if err := p.step(StepCDIWritten); err != nil {
		return err
	}
	for i := range c.Devices {
		c.Devices[i].CDIDeviceIDs = []string{ids[i]}
	}
	c.State = checkpoint.PrepareCompleted
	if err := p.update(func(cp *checkpoint.Checkpoint) { cp.Claims[c.UID] = c.DeepCopy() }); err != nil {
		return err
	}
	return p.step(StepPrepareCompleted)
}

func (p *Preparer) createMIG(ctx context.Context, d *checkpoint.Device) (tnvml.MIGDevice, error) {
	g := p.gpu(d.GPUIndex)
	if g == nil {
		return tnvml.MIGDevice{}, fmt.Errorf("MIG device %s: GPU %d is not on this node", d.Device, d.GPUIndex)
	}
	g.Lock()
	defer g.Unlock()
	turnedOn, err := p.migModeOn(ctx, g, d)
	if err != nil {
		return tnvml.MIGDevice{}, err
	}
	if err := p.step(StepMIGModeOn); err != nil {
		return tnvml.MIGDevice{}, err
	}
	m, err := p.nvml.CreateMIGDevice(ctx, d.GPUIndex, d.MIG.ProfileID, d.MIG.Placement)
	if err != nil {
		err = fmt.Errorf("create MIG device %s (profile %s at %d+%d) on GPU %d: %w", d.Device, d.MIG.Profile, d.MIG.Placement.Start, d.MIG.Placement.Size, d.GPUIndex, err)
		if turnedOn {
			// Undo what this create did: a GPU left in MIG mode shows
			// CUDA no device of its own, whole or shared.
			if offErr := p.migModeOffIfUnused(ctx, g); isAbandoned(offErr) {
				return m, offErr
			}
		}
		return m, err
	}
	if err := p.step(StepMIGCreated); err != nil {
		return m, err
	}
	return m, nil
}

// startTimeSlicing sets the GPU's time slice, which all its time-sliced
// claims share.
func (p *Preparer) startTimeSlicing(ctx context.Context, d *checkpoint.Device) error {
	if d.Sharing == nil || d.Sharing.Strategy != string(configapi.TimeSlicingStrategy) {
		return nil
	}
	g := p.gpu(d.GPUIndex)
	if g == nil {
		return fmt.Errorf("device %s: GPU %d is not on this node", d.Device, d.GPUIndex)
	}
	g.Lock()
	defer g.Unlock()
	if err := p.slicer.SetTimeSlice(ctx, d.GPUUUID, timeSlice(d.Sharing.Interval)); err != nil {
		return fmt.Errorf("device %s: %w", d.Device, err)
	}
	return p.step(StepTimeSliced)
}

// daemon is the claim's own MPS control daemon, with the sum of its MPS
// devices' limits (plan keeps them on one GPU), when it has any.
func (p *Preparer) daemon(c *checkpoint.Claim) (sharing.Daemon, bool) {
	d := sharing.Daemon{ID: c.UID}
	found := false
	for _, dev := range c.Devices {
		if dev.Sharing == nil || dev.Sharing.Strategy != string(configapi.MPSStrategy) {
			continue
		}
		found = true
		d.GPUUUID = dev.GPUUUID
		d.ActiveThreadPercentage += dev.Sharing.ActiveThreadPercentage
		d.PinnedMemoryLimitBytes += dev.Sharing.PinnedMemoryLimitBytes
	}
	d.ActiveThreadPercentage = min(d.ActiveThreadPercentage, 100)
	return d, found
}

func (p *Preparer) unprepare(ctx context.Context, uid string) (string, error) {
	unlockClaim, err := p.lockClaim(ctx, uid)
	if err != nil {
		return "none", err
	}
	defer unlockClaim()
	unlock, err := p.lockState(ctx, "unprepare claim "+uid)
	if err != nil {
		return "none", err
	}
	defer unlock()
	c := p.claim(uid)
	if c == nil {
		return "none", nil
	}
	if c.State != checkpoint.UnprepareStarted {
		c.State = checkpoint.UnprepareStarted
		if err := p.update(func(cp *checkpoint.Checkpoint) { cp.Claims[uid].State = checkpoint.UnprepareStarted }); err != nil {
			return kindOf(c), err
		}
		if err := p.step(StepUnprepareRecorded); err != nil {
			return kindOf(c), err
		}
	}
	return kindOf(c), p.teardown(ctx, c)
}

// teardown undoes whatever exists of a claim (c is a copy of its checkpoint
// entry) and forgets it. Each part is idempotent, so teardown can be
// repeated after a crash at any point.
func (p *Preparer) teardown(ctx context.Context, c *checkpoint.Claim) error {
	if err := p.cdi.Remove(c.UID); err != nil {
		return err
	}
	if err := p.step(StepCDIRemoved); err != nil {
		return err
	}
	var errs []error
	if _, ok := p.daemon(c); ok {
		if err := p.mps.Stop(ctx, c.UID); err != nil {
			errs = append(errs, err)
		} else if err := p.step(StepMPSStopped); err != nil {
			return err
		}
	}
	for i := range c.Devices {
		d := &c.Devices[i]
		if d.MIG != nil && d.MIG.Created {
			if err := p.destroyMIG(ctx, c.UID, d); err != nil {
				if isAbandoned(err) {
					return err
				}
				if !p.gpuLost(ctx, d.GPUIndex) {
					// Recorded and destroyed in the background, so that
					// the unprepare completes.
					if err := p.destroyLater(ctx, c, d, err); err != nil {
						errs = append(errs, err)
						continue
					}
				} else {
					// The instance went with its GPU.
					klog.FromContext(ctx).Error(err, "GPU of a MIG device is lost; forgetting the device", "device", d.Device, "gpu", d.GPUIndex)
				}
			}
			d.MIG.Created = false
			if err := p.update(func(cp *checkpoint.Checkpoint) { cp.Claims[c.UID].Devices[i].MIG.Created = false }); err != nil {
				return err
			}
			if err := p.step(StepMIGForgotten); err != nil {
				return err
			}
		}
		if err := p.stopTimeSlicing(ctx, c.UID, i, d); err != nil {
			if isAbandoned(err) {
				return err
			}
			if !p.gpuLost(ctx, d.GPUIndex) {
				errs = append(errs, err)
			}
		}
	}
	if len(errs) > 0 {
		// Keep the claim so that the kubelet's retry (or the next start)
		// finishes the job.
		return errors.Join(errs...)
	}
	if err := p.update(func(cp *checkpoint.Checkpoint) { delete(cp.Claims, c.UID) }); err != nil {
		return err
	}
	return p.step(StepUnprepareCompleted)
}

// destroyMIG destroys the claim's MIG instance, identified by its UUID
// where one was recorded (NVML reuses instance IDs, so an entry left by a
// failed write could otherwise name another claim's new instance), and
// never one that another claim's entry owns.
func (p *Preparer) destroyMIG(ctx context.Context, uid string, d *checkpoint.Device) error {
	g := p.gpu(d.GPUIndex)
	if g == nil {
		// The GPU was not found at start: its instances went with it.
		klog.FromContext(ctx).Info("GPU of a MIG device is gone; nothing to destroy", "device", d.Device, "gpu", d.GPUIndex)
		return nil
	}
	g.Lock()
	defer g.Unlock()
	existing, err := p.nvml.MIGDevices(ctx, d.GPUIndex)
	if err != nil {
		return fmt.Errorf("list MIG devices of GPU %d: %w", d.GPUIndex, err)
	}
	for _, m := range existing {
		if !sameMIG(d.MIG, m) {
			continue
		}
		if other, ok := p.migOwner(uid, d.GPUIndex, m); ok {
			klog.FromContext(ctx).Info("Not destroying a MIG instance another claim owns", "device", d.Device, "gpu", d.GPUIndex, "gpuInstance", m.GPUInstanceID, "owner", other)
			continue
		}
		if err := p.nvml.DestroyMIGDevice(ctx, d.GPUIndex, m.GPUInstanceID); err != nil {
			return fmt.Errorf("destroy MIG device %s on GPU %d: %w", d.Device, d.GPUIndex, err)
		}
	}
	if err := p.step(StepMIGDestroyed); err != nil {
		return err
	}
	return p.migModeOffIfUnused(ctx, g)
}

// stopTimeSlicing resets the GPU's time slice when no other claim
// time-slices it, and then records that this device no longer does: two
// claims torn down at once must not each see the other and both leave the
// time slice set.
func (p *Preparer) stopTimeSlicing(ctx context.Context, uid string, i int, d *checkpoint.Device) error {
	if d.Sharing == nil || d.Sharing.Strategy != string(configapi.TimeSlicingStrategy) {
		return nil
	}
	if g := p.gpu(d.GPUIndex); g != nil {
		g.Lock()
		defer g.Unlock()
	}
	if !p.sharedByOthers(uid, d.GPUUUID, d.Sharing.Strategy) {
		if err := p.slicer.SetTimeSlice(ctx, d.GPUUUID, timeSlice("")); err != nil {
			return fmt.Errorf("device %s: reset time slice: %w", d.Device, err)
		}
	}
	d.Sharing = nil
	return p.update(func(cp *checkpoint.Checkpoint) {
		if c, ok := cp.Claims[uid]; ok {
			c.Devices[i].Sharing = nil
		}
	})
}

// sharedByOthers reports whether a claim other than uid, in any state, uses
// the strategy on the GPU. A claim is recorded before its sharing is set up,
// so a concurrent prepare is always seen.
func (p *Preparer) sharedByOthers(uid, gpuUUID, strategy string) bool {
	_, ok := p.otherClaimWith(uid, func(d checkpoint.Device) bool {
		return d.GPUUUID == gpuUUID && d.Sharing != nil && d.Sharing.Strategy == strategy
	})
	return ok
}

// otherClaimWith returns the UID of a claim other than uid, in any state, with
// a device that matches.
func (p *Preparer) otherClaimWith(uid string, match func(checkpoint.Device) bool) (string, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for other, c := range p.cp.Claims {
		if other == uid {
			continue
		}
		if slices.ContainsFunc(c.Devices, match) {
			return other, true
		}
	}
	return "", false
}

// stateLockWait bounds every wait for the node's state lock (and for a
// claim's own lock) whose context has no earlier deadline. An operation that
// hangs while holding it (an NVML call that never returns cannot be
// interrupted, and giving up the lock while it may still act would let
// another operation see half its work) then fails the other claims'
// operations with an error that names it, instead of stalling every claim on
// the node; the kubelet retries them.
const stateLockWait = 30 * time.Second

// lockState locks the state directory against other plugin instances and
// rereads the checkpoint if one of them changed it. The wait ends with ctx
// or after stateLockWait; what says what the caller will do, for the error
// of whoever waits behind it.
func (p *Preparer) lockState(ctx context.Context, what string) (func(), error) {
	wait, cancel := context.WithTimeout(ctx, stateLockWait)
	defer cancel()
	unlock, err := p.store.Lock(wait)
	if err != nil {
		if h := p.holder.Load(); h != nil {
			err = fmt.Errorf("%w (held in this instance since %s by: %s)", err, h.since.Format(time.RFC3339), h.what)
		}
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	p.holder.Store(&lockHolder{what: what, since: time.Now()})
	held := func() {
		p.holder.Store(nil)
		unlock()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, err := p.reloadIfChanged(); err != nil {
		held()
		return nil, err
	}
	return held, nil
}

// lockClaim serialises the operations on one claim; the wait ends with ctx
// or after stateLockWait, as the state lock's does.
func (p *Preparer) lockClaim(ctx context.Context, uid string) (func(), error) {
	ctx, cancel := context.WithTimeout(ctx, stateLockWait)
	defer cancel()
	return p.claims.lock(ctx, uid)
}

// lockHolder says which operation of this instance holds the state lock.
type lockHolder struct {
	what  string
	since time.Time
}

// reloadIfChanged rereads the checkpoint when another plugin instance
// changed it since this one last read or wrote it, and reports whether it
// did. The caller holds the state lock and p.mu.
func (p *Preparer) reloadIfChanged() (bool, error) {
	changed, err := p.store.Changed()
	if err == nil && changed {
		var cp *checkpoint.Checkpoint
		if cp, err = p.store.Load(); err == nil {
			p.cp = cp
		}
	}
	if err != nil {
		return false, fmt.Errorf("reread checkpoint another plugin instance changed: %w", err)
	}
	// The other instance of a rolling update may have left MIG instances
	// to destroy, whose placements are held.
	if _, err := p.loadPendingDestroys(); err != nil {
		return false, err
	}
	return changed, nil
}

// claim returns a copy of the claim's checkpoint entry, nil when unknown.
func (p *Preparer) claim(uid string) *checkpoint.Claim {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.cp.Claims[uid]; ok {
		return c.DeepCopy()
	}
	return nil
}

// PreparedDevices names the devices of every claim in the checkpoint,
// prepared or on the way in or out: what the node's hardware holds, or may
// hold, for allocated claims. The kubelet plugin withdraws the devices they
// block from its slices (resourceslice.Options.WithdrawBlocked).
//
// The answer is the checkpoint as it is on disk, reread when another plugin
// instance (a rolling update) changed it, and it stays so until release is
// called: PreparedDevices returns holding the state lock shared (waiting for
// it at most until ctx ends), so that no prepare or unprepare of either
// instance changes the checkpoint while a publication computed from it is
// on its way to the API server. Otherwise the other instance could unprepare
// a claim, publish the devices it blocked and see one allocated, and only
// then this publication land and hide it.
func (p *Preparer) PreparedDevices(ctx context.Context) (prepared map[string]bool, release func(), err error) {
	wait, cancel := context.WithTimeout(ctx, stateLockWait)
	defer cancel()
	unlock, err := p.store.RLock(wait)
	if err != nil {
		if h := p.holder.Load(); h != nil {
			err = fmt.Errorf("%w (held in this instance since %s by: %s)", err, h.since.Format(time.RFC3339), h.what)
		}
		return nil, nil, fmt.Errorf("read the prepared devices: %w", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, err := p.reloadIfChanged(); err != nil {
		unlock()
		return nil, nil, err
	}
	out := map[string]bool{}
	for _, c := range p.cp.Claims {
		for _, d := range c.Devices {
			// An admin-access device blocks nothing: the scheduler
			// counts it for no one.
			if !d.AdminAccess {
				out[d.Device] = true
			}
		}
	}
	// An instance an unprepare left holds its placement until it is gone.
	for _, rec := range p.pendingDestroyList() {
		out[rec.Device] = true
	}
	return out, unlock, nil
}

// CheckpointChanged reports whether another plugin instance changed the
// checkpoint since this one last read or wrote it (a stat of the file and
// its journal: inode, size, modification time).
func (p *Preparer) CheckpointChanged() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	changed, err := p.store.Changed()
	return changed || err != nil
}

// CheckpointedClaims names every claim in the checkpoint as it is on disk
// (see PreparedDevices), in any state.
func (p *Preparer) CheckpointedClaims(ctx context.Context) ([]kubeletplugin.NamespacedObject, error) {
	claims, err := p.onDisk(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]kubeletplugin.NamespacedObject, 0, len(claims))
	for _, uid := range sortedKeys(claims) {
		c := claims[uid]
		out = append(out, kubeletplugin.NamespacedObject{
			NamespacedName: types.NamespacedName{Namespace: c.Namespace, Name: c.Name}, UID: types.UID(c.UID),
		})
	}
	return out, nil
}

// onDisk returns the checkpoint's claims as they are on disk: when another
// plugin instance changed the file since this one last read or wrote it, it
// is reread under the state lock (waiting at most until ctx ends). The
// claims are shared: read only.
func (p *Preparer) onDisk(ctx context.Context) (map[string]*checkpoint.Claim, error) {
	p.mu.Lock()
	changed, err := p.store.Changed()
	p.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("check the checkpoint for changes: %w", err)
	}
	if changed {
		unlock, err := p.lockState(ctx, "read the checkpoint another plugin instance changed")
		if err != nil {
			return nil, err
		}
		defer unlock()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	// update replaces p.cp rather than changing it: this map stays as read.
	return p.cp.Claims, nil
}

// update changes the checkpoint and writes it. A failed write leaves the
// in-memory checkpoint as the file is.
func (p *Preparer) update(change func(*checkpoint.Checkpoint)) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	next := p.cp.DeepCopy()
	change(next)
	if err := p.store.Save(next); err != nil {
		return err
	}
	p.cp = next
	p.recordMetrics()
	return nil
}

// recordMetrics must be called with p.mu held.
func (p *Preparer) recordMetrics() {
	if p.metrics == nil {
		return
	}
	kinds := map[string]int{}
	mig := 0
	daemons := map[string]bool{}
	for uid, c := range p.cp.Claims {
		for _, d := range c.Devices {
			if c.State == checkpoint.PrepareCompleted {
				kinds[d.Kind]++
			}
			if d.MIG != nil && d.MIG.Created {
				mig++
			}
			if d.Sharing != nil && d.Sharing.Strategy == string(configapi.MPSStrategy) {
				daemons[uid] = true
			}
		}
	}
	p.metrics.SetPrepared(kinds, mig, len(daemons))
}

func ptrCopy[T any](v *T) *T {
	if v == nil {
		return nil
	}
	c := *v
	return &c
}

// gpuLost reports whether a GPU is gone: not found at start, or answering
// that it fell off the bus. What a claim had on it went with it, so that
// unprepare must not fail on it forever.
func (p *Preparer) gpuLost(ctx context.Context, index int) bool {
	if p.gpu(index) == nil {
		return true
	}
	h, ok := p.nvml.(tnvml.Health)
	return ok && errors.Is(h.CheckGPU(ctx, index), tnvml.ErrGPULost)
}

// sameMIG reports whether an existing instance is the recorded one: by
// UUID where both have one, else by instance ID, placement and profile.
func sameMIG(rec *checkpoint.MIG, m tnvml.MIGDevice) bool {
	if rec.UUID != "" && m.UUID != "" {
		return rec.UUID == m.UUID
	}
	return m.GPUInstanceID == rec.GPUInstanceID && m.Placement == rec.Placement && m.ProfileID == rec.ProfileID
}

// migOwner returns the UID of a claim other than uid whose entry owns the
// instance.
func (p *Preparer) migOwner(uid string, gpu int, m tnvml.MIGDevice) (string, bool) {
	return p.otherClaimWith(uid, func(d checkpoint.Device) bool {
		return d.GPUIndex == gpu && d.MIG != nil && d.MIG.Created && sameMIG(d.MIG, m)
	})
}
