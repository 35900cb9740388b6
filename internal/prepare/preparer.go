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
	"strings"
	"sync"
	"sync/atomic"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/client-go/tools/events"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/klog/v2"

	tcdi "github.com/tessera-gpu/tessera/internal/cdi"
	"github.com/tessera-gpu/tessera/internal/checkpoint"
	"github.com/tessera-gpu/tessera/internal/hardware"
	"github.com/tessera-gpu/tessera/internal/metrics"
	tnvml "github.com/tessera-gpu/tessera/internal/nvml"
	"github.com/tessera-gpu/tessera/internal/sharing"
	"github.com/tessera-gpu/tessera/pkg/inventory"
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

	// inventory is the node as the caller discovered it.
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

// New loads the checkpoint and reconciles it with the node's state, as
// discovered (WithInventory) and as NVML reports its MIG instances. A checkpoint that cannot be read stops New with an
// error before anything is destroyed.
func New(ctx context.Context, opts ...Option) (*Preparer, error) {
	p := &Preparer{cdiRoot: "/var/run/cdi", driverRoot: "/", stateDir: "/var/lib/tessera", migOff: map[int]error{}}
	for _, o := range opts {
		o(p)
	}
	switch {
	case p.nvml == nil:
		return nil, errors.New("prepare: the hardware has no NVML library")
	case p.mps == nil:
		return nil, errors.New("prepare: the hardware has no MPS control")
	case p.slicer == nil:
		return nil, errors.New("prepare: the hardware has no time slicer")
	case p.deviceNodes == nil:
		return nil, errors.New("prepare: the hardware has no device nodes")
	case p.inventory == nil:
		return nil, errors.New("prepare: no inventory")
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
	node := *p.inventory
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
