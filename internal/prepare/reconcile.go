package prepare

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"

	"k8s.io/klog/v2"

	"github.com/tessera-gpu/tessera/internal/checkpoint"
)

// reconcile brings the node in line with the checkpoint after a start:
// completed claims are served as before (their CDI spec and MPS daemon are
// restored if missing), half-made or half-torn-down claims are rolled back,
// MIG instances no completed claim owns are destroyed, CDI specs of claims
// the plugin does not hold are removed, MPS daemons nobody needs stopped.
func (p *Preparer) reconcile(ctx context.Context) error {
	logger := klog.FromContext(ctx)
	var errs []error
	for _, uid := range p.cp.UIDs() {
		c := p.claim(uid)
		if c.State == checkpoint.PrepareCompleted {
			continue
		}
		logger.Info("Rolling back a claim interrupted by a restart", "claimUID", uid, "claim", c.Namespace+"/"+c.Name, "state", c.State)
		if err := p.teardown(ctx, c); err != nil {
			errs = append(errs, fmt.Errorf("roll back claim %s: %w", uid, err))
		}
	}

	completed := p.completedClaims()
	owned := map[int][]*checkpoint.MIG{}
	for _, c := range completed {
		for _, d := range c.Devices {
			if d.MIG != nil && d.MIG.Created {
				owned[d.GPUIndex] = append(owned[d.GPUIndex], d.MIG)
			}
		}
	}

	// Those an unprepare left are the background's to destroy (and count
	// as held until then).
	for _, rec := range p.pendingDestroyList() {
		if _, index := p.gpuByUUID(rec.GPUUUID); index != goneGPU {
			owned[index] = append(owned[index], &rec.MIG)
		}
	}

	p.invMu.RLock()
	gpus := maps.Clone(p.gpus)
	p.invMu.RUnlock()
	for index, g := range gpus {
		if !g.gpu.MIG.Capable {
			continue
		}
		g.Lock()
		err := p.destroyUnowned(ctx, g, owned)
		g.Unlock()
		if err != nil {
			errs = append(errs, fmt.Errorf("GPU %d: %w", index, err))
		}
	}

	// A reboot or GPU reset took the instances of prepared claims.
	for _, uid := range sortedKeys(completed) {
		if _, err := p.reviveMIG(ctx, completed[uid]); err != nil {
			errs = append(errs, fmt.Errorf("claim %s: %w", uid, err))
		}
	}
	completed = p.completedClaims()

	specs, err := p.cdi.Claims()
	if err != nil {
		errs = append(errs, err)
	}
	for _, uid := range specs {
		if _, ok := completed[uid]; ok {
			continue
		}
		logger.Info("Removing the CDI spec of a claim the plugin does not hold", "claimUID", uid)
		if err := p.cdi.Remove(uid); err != nil {
			errs = append(errs, err)
		}
	}
	for _, uid := range sortedKeys(completed) {
		c := completed[uid]
		spec, err := p.cdiClaim(c)
		if err == nil {
			_, err = p.cdi.Write(spec)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("restore CDI spec of claim %s: %w", uid, err))
		}
	}

	daemons, err := p.mps.List(ctx)
	if err != nil {
		errs = append(errs, err)
	}
	for _, id := range sortedKeys(daemons) {
		if c, ok := completed[id]; ok {
			if _, uses := p.daemon(c); uses {
				continue
			}
		}
		logger.Info("Stopping an MPS daemon no claim uses", "daemon", id, "alive", daemons[id])
		if err := p.mps.Stop(ctx, id); err != nil {
			errs = append(errs, err)
		}
	}
	// Daemons die with the plugin's container: the claims' running clients
	// lose their server, and new CUDA contexts of the claim's containers
	// connect to the daemon started here, with the same limits.
	if _, err := p.syncMPS(ctx, false, nil); err != nil {
		errs = append(errs, err)
	}
	p.mu.Lock()
	p.recordMetrics()
	p.mu.Unlock()
	return errors.Join(errs...)
}

// destroyUnowned destroys the GPU's MIG instances that no completed claim
// owns and switches MIG mode off when none remains. Must be called with g
// locked.
func (p *Preparer) destroyUnowned(ctx context.Context, g *gpuState, owned map[int][]*checkpoint.MIG) error {
	existing, err := p.nvml.MIGDevices(ctx, g.gpu.Index)
	if err != nil {
		return fmt.Errorf("list MIG devices: %w", err)
	}
	for _, m := range existing {
		if slices.ContainsFunc(owned[g.gpu.Index], func(rec *checkpoint.MIG) bool { return sameMIG(rec, m) }) {
			continue
		}
		klog.FromContext(ctx).Info("Destroying a MIG instance no claim owns", "gpu", g.gpu.Index, "gpuInstance", m.GPUInstanceID, "placement", m.Placement)
		if err := p.nvml.DestroyMIGDevice(ctx, g.gpu.Index, m.GPUInstanceID); err != nil {
			return fmt.Errorf("destroy MIG instance %d: %w", m.GPUInstanceID, err)
		}
	}
	return p.migModeOffIfUnused(ctx, g)
}

// completedClaims returns copies of the completed claims by UID.
func (p *Preparer) completedClaims() map[string]*checkpoint.Claim {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]*checkpoint.Claim{}
	for uid, c := range p.cp.Claims {
		if c.State == checkpoint.PrepareCompleted {
			out[uid] = c.DeepCopy()
		}
	}
	return out
}
