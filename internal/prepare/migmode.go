package prepare

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"github.com/tessera-gpu/tessera/internal/checkpoint"
	tnvml "github.com/tessera-gpu/tessera/internal/nvml"
)

// MIG mode is switched on for the first partition of a GPU that can switch it
// without a reset and off once its last partition is gone, so that the GPU
// can again be used whole or shared. It is changed only where it differs
// (a busy GPU may refuse even a change to the mode it is in). A GPU whose
// change needs a reset is never changed again (the NVML library refuses,
// and discovery offers what its mode allows); switching it off is best
// effort: a failure never fails an unprepare, and is retried in the
// background.

// migModeOn switches MIG mode on for a partition where it is off, and
// reports whether it did. Must be called with g locked.
func (p *Preparer) migModeOn(ctx context.Context, g *gpuState, d *checkpoint.Device) (bool, error) {
	mode, err := p.nvml.MIGMode(ctx, d.GPUIndex)
	if err != nil {
		return false, fmt.Errorf("MIG device %s: %w", d.Device, err)
	}
	// A partition is wanted: no switching off behind its back.
	p.clearMIGModeOff(g.gpu.Index)
	if mode.Enabled {
		return false, nil
	}
	if !g.gpu.MIG.ToggleWithoutReset {
		return false, fmt.Errorf("MIG device %s: MIG mode is off on GPU %d, which cannot switch it without a reset", d.Device, d.GPUIndex)
	}
	if err := p.nvml.SetMIGMode(ctx, d.GPUIndex, true); err != nil {
		p.noteResetRequired(g, err)
		return false, fmt.Errorf("enable MIG mode on GPU %d: %w", d.GPUIndex, err)
	}
	return true, nil
}

// migModeOffForWhole makes sure a whole or shared device is not handed out
// on a GPU in MIG mode, where CUDA sees no device of its own: a GPU left in
// MIG mode with no partition (a MIG-off that failed) is switched off now; one
// that cannot be fails the prepare with the reason.
func (p *Preparer) migModeOffForWhole(ctx context.Context, d *checkpoint.Device) error {
	g := p.gpu(d.GPUIndex)
	if g == nil {
		return fmt.Errorf("device %s: GPU %d is not on this node", d.Device, d.GPUIndex)
	}
	g.Lock()
	defer g.Unlock()
	mode, err := p.nvml.MIGMode(ctx, d.GPUIndex)
	if err != nil {
		return fmt.Errorf("device %s: %w", d.Device, err)
	}
	if !mode.Enabled {
		return nil
	}
	if !g.gpu.MIG.ToggleWithoutReset {
		return fmt.Errorf("device %s: GPU %d is in MIG mode, which it cannot leave without a reset", d.Device, d.GPUIndex)
	}
	left, err := p.nvml.MIGDevices(ctx, d.GPUIndex)
	if err != nil {
		return fmt.Errorf("device %s: list MIG devices of GPU %d: %w", d.Device, d.GPUIndex, err)
	}
	if len(left) > 0 {
		return fmt.Errorf("device %s: GPU %d is in MIG mode with %d MIG instances", d.Device, d.GPUIndex, len(left))
	}
	if err := p.nvml.SetMIGMode(ctx, d.GPUIndex, false); err != nil {
		p.noteResetRequired(g, err)
		return fmt.Errorf("device %s: switch MIG mode off on GPU %d: %w", d.Device, d.GPUIndex, err)
	}
	if p.clearMIGModeOff(d.GPUIndex) {
		p.event(corev1.EventTypeNormal, ReasonMIGModeOff, "SwitchMIGModeOff", "MIG mode of GPU %d (%s) is off again after a deferred attempt, for device %s", d.GPUIndex, g.gpu.UUID, d.Device)
	}
	return nil
}

// migModeOffIfUnused switches MIG mode off on a GPU that can switch it
// without a reset once no partition remains. A failure is logged, counted
// and retried in the background (RetryMIGModeOff), never returned: an
// unprepare that destroyed its partition is done. Only an abandoned step is
// returned. Must be called with g locked.
func (p *Preparer) migModeOffIfUnused(ctx context.Context, g *gpuState) error {
	index := g.gpu.Index
	if !g.gpu.MIG.ToggleWithoutReset {
		p.clearMIGModeOff(index)
		return nil
	}
	left, err := p.nvml.MIGDevices(ctx, index)
	if err != nil {
		p.deferMIGModeOff(ctx, index, fmt.Errorf("list MIG devices of GPU %d: %w", index, err))
		return nil
	}
	if len(left) > 0 {
		p.clearMIGModeOff(index)
		return nil
	}
	if err := p.nvml.SetMIGMode(ctx, index, false); err != nil {
		if p.noteResetRequired(g, err) {
			// Never to be tried again: nothing to retry.
			p.clearMIGModeOff(index)
			return nil
		}
		p.deferMIGModeOff(ctx, index, fmt.Errorf("disable MIG mode on GPU %d: %w", index, err))
		return nil
	}
	if p.clearMIGModeOff(index) {
		p.event(corev1.EventTypeNormal, ReasonMIGModeOff, "SwitchMIGModeOff", "MIG mode of GPU %d (%s) is off again after a deferred attempt", index, g.gpu.UUID)
	}
	return p.step(StepMIGModeOff)
}

// noteResetRequired exports a GPU whose MIG mode change needed a reset, and
// reports whether err says so. The NVML library logs it, once.
func (p *Preparer) noteResetRequired(g *gpuState, err error) bool {
	if !errors.Is(err, tnvml.ErrResetRequired) {
		return false
	}
	p.metrics.SetMIGModeResetRequired(g.gpu.Index)
	return true
}

// deferMIGModeOff records that the GPU's MIG mode is to be switched off in
// the background; the first failure is logged as an error, repeats quietly.
func (p *Preparer) deferMIGModeOff(ctx context.Context, index int, err error) {
	p.migOffMu.Lock()
	_, known := p.migOff[index]
	p.migOff[index] = err
	n := len(p.migOff)
	p.migOffMu.Unlock()
	p.metrics.CountMIGModeOffFailure()
	p.metrics.SetMIGModeOffPending(n)
	logger := klog.FromContext(ctx)
	if !known {
		logger.Error(err, "Switching MIG mode off failed; retrying in the background", "gpu", index)
		p.event(corev1.EventTypeWarning, ReasonMIGModeOffDeferred, "SwitchMIGModeOff",
			"GPU %d has no MIG partition left but its MIG mode could not be switched off (%v): it cannot be used whole or shared until it is; retrying in the background", index, err)
	} else {
		logger.V(2).Info("Switching MIG mode off failed again", "gpu", index, "err", err)
	}
}

// clearMIGModeOff forgets a GPU's deferred MIG-off, and reports whether
// one was pending.
func (p *Preparer) clearMIGModeOff(index int) bool {
	p.migOffMu.Lock()
	_, known := p.migOff[index]
	delete(p.migOff, index)
	n := len(p.migOff)
	p.migOffMu.Unlock()
	if known {
		p.metrics.SetMIGModeOffPending(n)
	}
	return known
}

// RetryMIGModeOff tries once more to switch MIG mode off on each GPU where
// it failed, and returns the GPUs where it still has to be.
func (p *Preparer) RetryMIGModeOff(ctx context.Context) []int {
	p.migOffMu.Lock()
	pending := make([]int, 0, len(p.migOff))
	for index := range p.migOff {
		pending = append(pending, index)
	}
	p.migOffMu.Unlock()
	slices.Sort(pending)
	for _, index := range pending {
		if err := p.retryMIGModeOff(ctx, index); err != nil {
			klog.FromContext(ctx).Error(err, "Retrying to switch MIG mode off", "gpu", index)
		}
	}
	p.migOffMu.Lock()
	defer p.migOffMu.Unlock()
	var left []int
	for index := range p.migOff {
		left = append(left, index)
	}
	slices.Sort(left)
	return left
}

func (p *Preparer) retryMIGModeOff(ctx context.Context, index int) error {
	// Under the state lock, as a prepare or unprepare of this or another
	// plugin instance changes MIG state.
	unlock, err := p.lockState(ctx, fmt.Sprintf("switch MIG mode off on GPU %d", index))
	if err != nil {
		return err
	}
	defer unlock()
	g := p.gpu(index)
	if g == nil {
		p.clearMIGModeOff(index)
		return nil
	}
	g.Lock()
	defer g.Unlock()
	return p.migModeOffIfUnused(ctx, g)
}

// WatchMIGModeOff retries switching MIG mode off where it failed, first
// after interval, doubling the wait up to maxMIGModeOffBackoff while a GPU
// stays busy, until ctx ends.
func (p *Preparer) WatchMIGModeOff(ctx context.Context, interval time.Duration) error {
	delay := interval
	timer := time.NewTimer(delay)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		}
		if left := p.RetryMIGModeOff(ctx); len(left) > 0 {
			delay = min(2*delay, maxMIGModeOffBackoff)
		} else {
			delay = interval
		}
		timer.Reset(delay)
	}
}

// maxMIGModeOffBackoff bounds the wait between retries of a MIG-off: a
// monitoring client holding the GPU may stay for long.
const maxMIGModeOffBackoff = 5 * time.Minute
