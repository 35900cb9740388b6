package prepare

import (
	"context"
	"fmt"
	"slices"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"

	configapi "github.com/tessera-gpu/tessera/api/config/v1alpha1"
	"github.com/tessera-gpu/tessera/internal/checkpoint"
)

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
	unlock, err := p.waitForState(ctx, p.store.Lock, what)
	if err != nil {
		return nil, err
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

// waitForState takes the state lock with lock, waiting until ctx ends or
// for stateLockWait; its error names what the caller was doing and, where
// this instance holds the lock, what holds it since when.
func (p *Preparer) waitForState(ctx context.Context, lock func(context.Context) (func(), error), what string) (func(), error) {
	wait, cancel := context.WithTimeout(ctx, stateLockWait)
	defer cancel()
	unlock, err := lock(wait)
	if err != nil {
		if h := p.holder.Load(); h != nil {
			err = fmt.Errorf("%w (held in this instance since %s by: %s)", err, h.since.Format(time.RFC3339), h.what)
		}
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return unlock, nil
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
	unlock, err := p.waitForState(ctx, p.store.RLock, "read the prepared devices")
	if err != nil {
		return nil, nil, err
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
