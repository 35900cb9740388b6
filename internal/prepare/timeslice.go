package prepare

import (
	"context"
	"fmt"

	configapi "github.com/tessera-gpu/tessera/api/config/v1alpha1"
	"github.com/tessera-gpu/tessera/internal/checkpoint"
)

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
