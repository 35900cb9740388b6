package prepare

import (
	"context"
	"errors"
	"fmt"
	"time"

	"k8s.io/klog/v2"

	"github.com/tessera-gpu/tessera/internal/checkpoint"
)

// SyncMPS restarts the MPS daemons that prepared claims need and that are
// not alive (a daemon that crashed or was killed, or died with a previous
// plugin container), so that their clients can reconnect; a restarted
// daemon gets the claim's limits again. It returns the UIDs of the claims
// whose daemon was restarted.
func (p *Preparer) SyncMPS(ctx context.Context) ([]string, error) {
	return p.syncMPS(ctx, true, nil)
}

// syncMPS is SyncMPS; lock says whether to take the state lock (start-up
// holds it already); backoff, when set, spaces out the restarts of daemons
// that fail to start.
func (p *Preparer) syncMPS(ctx context.Context, lock bool, backoff *restartBackoff) ([]string, error) {
	if lock {
		// Another plugin instance (a rolling update) may have prepared
		// claims since this one last read the checkpoint: their daemons
		// are this one's to keep alive too when that instance ends.
		unlock, err := p.lockState(ctx, "check MPS daemons")
		if err != nil {
			return nil, err
		}
		unlock()
	}
	daemons, err := p.mps.List(ctx)
	if err != nil {
		return nil, err
	}
	var restarted []string
	var errs []error
	completed := p.completedClaims()
	backoff.forgetAllBut(completed)
	for _, uid := range sortedKeys(completed) {
		if daemons[uid] || !backoff.due(uid, time.Now()) {
			continue
		}
		started, err := p.restartDaemon(ctx, uid, lock)
		if err != nil {
			backoff.failed(uid, time.Now())
			errs = append(errs, err)
			continue
		}
		backoff.succeeded(uid)
		if started {
			restarted = append(restarted, uid)
		}
	}
	return restarted, errors.Join(errs...)
}

// restartDaemon starts the claim's daemon under the claim's lock, so that
// a concurrent unprepare cannot leave a daemon behind.
func (p *Preparer) restartDaemon(ctx context.Context, uid string, lock bool) (bool, error) {
	unlockClaim, err := p.lockClaim(ctx, uid)
	if err != nil {
		return false, err
	}
	defer unlockClaim()
	if lock {
		unlock, err := p.lockState(ctx, "restart MPS daemon of claim "+uid)
		if err != nil {
			return false, err
		}
		defer unlock()
	}
	c := p.claim(uid)
	if c == nil || c.State != checkpoint.PrepareCompleted {
		return false, nil
	}
	d, ok := p.daemon(c)
	if !ok {
		return false, nil
	}
	if err := p.mps.Start(ctx, d); err != nil {
		return false, fmt.Errorf("restart MPS daemon of claim %s/%s: %w", c.Namespace, c.Name, err)
	}
	return true, nil
}

// WatchMPS calls SyncMPS every interval until ctx ends. The interval is
// how long a claim's new CUDA processes may run without MPS, so without
// limits, after its daemon died; a daemon that fails to start is retried
// less and less often, up to once a minute, because each try holds the
// node's state lock for up to the start timeout.
func (p *Preparer) WatchMPS(ctx context.Context, interval time.Duration) error {
	logger := klog.FromContext(ctx)
	backoff := newRestartBackoff(interval, time.Minute)
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
			restarted, err := p.syncMPS(ctx, true, backoff)
			if len(restarted) > 0 {
				logger.Info("Restarted MPS daemons that had stopped", "claims", restarted)
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
