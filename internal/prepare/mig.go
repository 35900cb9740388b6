package prepare

import (
	"context"
	"fmt"

	"k8s.io/klog/v2"

	"github.com/tessera-gpu/tessera/internal/checkpoint"
	tnvml "github.com/tessera-gpu/tessera/internal/nvml"
)

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
