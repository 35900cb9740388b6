package prepare

import (
	"context"
	"errors"
	"time"

	"k8s.io/klog/v2"

	"github.com/tessera-gpu/tessera/internal/checkpoint"
)

// SyncMPS restarts the MPS daemons that prepared claims need and that are
// not running (a daemon that crashed or was killed), so that their
// clients can reconnect. It returns the GPUs whose daemon was restarted.
func (p *Preparer) SyncMPS(ctx context.Context) ([]string, error) {
	want := map[string]int{}
	for _, c := range p.completedClaims() {
		for _, d := range c.Devices {
			if d.Sharing != nil && d.Sharing.Strategy == "MPS" {
				want[d.GPUUUID] = d.GPUIndex
			}
		}
	}
	running, err := p.mps.Running(ctx)
	if err != nil {
		return nil, err
	}
	up := map[string]bool{}
	for _, gpu := range running {
		up[gpu] = true
	}
	var restarted []string
	var errs []error
	for _, uuid := range sortedKeys(want) {
		if up[uuid] {
			continue
		}
		g := p.gpus[want[uuid]]
		g.Lock()
		// Checked again under the GPU's lock: the last claim may have
		// been unprepared meanwhile.
		if p.usesMPS(uuid) {
			if err := p.mps.Start(ctx, p.daemon(uuid)); err != nil {
				errs = append(errs, err)
			} else {
				restarted = append(restarted, uuid)
			}
		}
		g.Unlock()
	}
	return restarted, errors.Join(errs...)
}

func (p *Preparer) usesMPS(gpuUUID string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.cp.Claims {
		if c.State != checkpoint.PrepareCompleted {
			continue
		}
		for _, d := range c.Devices {
			if d.GPUUUID == gpuUUID && d.Sharing != nil && d.Sharing.Strategy == "MPS" {
				return true
			}
		}
	}
	return false
}

// WatchMPS calls SyncMPS every interval until ctx ends.
func (p *Preparer) WatchMPS(ctx context.Context, interval time.Duration) error {
	logger := klog.FromContext(ctx)
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
			restarted, err := p.SyncMPS(ctx)
			if len(restarted) > 0 {
				logger.Info("Restarted MPS daemons that had stopped", "gpus", restarted)
			}
			if err != nil {
				logger.Error(err, "Restarting MPS daemons failed")
			}
		}
	}
}

// MIGDeviceName names the MIG device that a prepared claim holds as the
// given GPU instance, so that an XID confined to that instance taints only
// that device.
func (p *Preparer) MIGDeviceName(gpu, gpuInstanceID int) (string, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.cp.Claims {
		for _, d := range c.Devices {
			if d.GPUIndex == gpu && d.MIG != nil && d.MIG.Created && d.MIG.GPUInstanceID == gpuInstanceID {
				return d.Device, true
			}
		}
	}
	return "", false
}
