package prepare

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"github.com/tessera-gpu/tessera/internal/checkpoint"
	tnvml "github.com/tessera-gpu/tessera/internal/nvml"
)

// An unprepare whose MIG instance will not go (NVML answers IN_USE while a
// process of the pod's still holds it, or an error) completes anyway: the
// kubelet would otherwise retry for ever, the pod stay Terminating and the
// GPU's other devices stay withdrawn. The instance is recorded in a file of
// its own in the state directory, written under the state lock before the
// claim is forgotten, and destroyed in the background, with backoff, until
// it is destroyed or gone (NVML's NOT_FOUND, or MIG mode off after a GPU
// reset or reboot, or its GPU lost). Meanwhile its placement counts as held:
// no claim is prepared on anything it overlaps, and the slices withdraw
// what it blocks, as for a prepared claim.

// PendingDestroyFileName is the file in the state directory that lists the
// MIG instances to destroy in the background.
const PendingDestroyFileName = "mig-destroy-pending.json"

// pendingDestroyVersion is the version of the file's format.
const pendingDestroyVersion = 1

// pendingDestroy is one MIG instance an unprepare could not destroy.
type pendingDestroy struct {
	// GPUUUID identifies its GPU (NVML indexes shift across reboots);
	// GPUIndex is the index it had.
	GPUUUID  string `json:"gpuUUID"`
	GPUIndex int    `json:"gpuIndex"`
	// Device is the device name it was allocated as, which stays
	// withdrawn while it is pending.
	Device string `json:"device"`
	// Claim names the claim it was made for, for the logs and Events.
	Claim string         `json:"claim"`
	MIG   checkpoint.MIG `json:"mig"`
	Since time.Time      `json:"since"`
	// LastError is why it was last not destroyed.
	LastError string `json:"lastError,omitempty"`
}

type pendingDestroyFile struct {
	Version   int              `json:"version"`
	Instances []pendingDestroy `json:"instances"`
}

func (p *Preparer) pendingDestroyPath() string {
	return filepath.Join(p.stateDir, PendingDestroyFileName)
}

// loadPendingDestroys reads the file (a missing one lists nothing) and
// makes it what the Preparer holds. Called with the state lock held, so
// that what another plugin instance recorded is seen.
func (p *Preparer) loadPendingDestroys() ([]pendingDestroy, error) {
	data, err := os.ReadFile(p.pendingDestroyPath())
	var f pendingDestroyFile
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("read MIG instances to destroy: %w", err)
	default:
		if err := json.Unmarshal(data, &f); err != nil {
			return nil, fmt.Errorf("read MIG instances to destroy from %s: %w", p.pendingDestroyPath(), err)
		}
		if f.Version != pendingDestroyVersion {
			return nil, fmt.Errorf("read MIG instances to destroy from %s: unknown version %d", p.pendingDestroyPath(), f.Version)
		}
	}
	p.setPendingDestroys(f.Instances)
	return slices.Clone(f.Instances), nil
}

// savePendingDestroys writes the list atomically (temp file, fsync,
// rename, directory fsync) and makes it what the Preparer holds. Called
// with the state lock held.
func (p *Preparer) savePendingDestroys(list []pendingDestroy) error {
	data, err := json.Marshal(pendingDestroyFile{Version: pendingDestroyVersion, Instances: list})
	if err != nil {
		return err
	}
	if err := p.pendingFault(list); err != nil {
		return fmt.Errorf("record MIG instances to destroy: %w", err)
	}
	tmp, err := os.CreateTemp(p.stateDir, PendingDestroyFileName+".*.tmp")
	if err != nil {
		return fmt.Errorf("record MIG instances to destroy: %w", err)
	}
	defer func() { _ = os.Remove(tmp.Name()) }()
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), p.pendingDestroyPath())
	}
	if err == nil {
		err = syncDirectory(p.stateDir)
	}
	if err != nil {
		return fmt.Errorf("record MIG instances to destroy in %s: %w", p.pendingDestroyPath(), err)
	}
	p.setPendingDestroys(list)
	return nil
}

func (p *Preparer) pendingFault(list []pendingDestroy) error {
	if p.pendingDestroyFault == nil {
		return nil
	}
	return p.pendingDestroyFault(len(list))
}

func syncDirectory(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer func() { _ = d.Close() }()
	return d.Sync()
}

func (p *Preparer) setPendingDestroys(list []pendingDestroy) {
	p.pendingMu.Lock()
	p.pendingDestroys = slices.Clone(list)
	p.pendingMu.Unlock()
	p.metrics.SetMIGDestroyPending(len(list))
}

// pendingDestroyList returns a copy of the instances waiting to be destroyed.
func (p *Preparer) pendingDestroyList() []pendingDestroy {
	p.pendingMu.Lock()
	defer p.pendingMu.Unlock()
	return slices.Clone(p.pendingDestroys)
}

// destroyLater records a MIG instance that could not be destroyed, so that
// its claim can be forgotten. Called with the state lock held.
func (p *Preparer) destroyLater(ctx context.Context, c *checkpoint.Claim, d *checkpoint.Device, cause error) error {
	list, err := p.loadPendingDestroys()
	if err != nil {
		return errors.Join(cause, err)
	}
	rec := pendingDestroy{
		GPUUUID: d.GPUUUID, GPUIndex: d.GPUIndex, Device: d.Device, Claim: holder(c),
		MIG: *d.MIG, Since: time.Now().UTC(), LastError: cause.Error(),
	}
	rec.MIG.Created = true
	known := slices.ContainsFunc(list, func(q pendingDestroy) bool { return q.GPUUUID == rec.GPUUUID && sameRecorded(&q.MIG, &rec.MIG) })
	if !known {
		list = append(list, rec)
	}
	if err := p.savePendingDestroys(list); err != nil {
		return errors.Join(cause, err)
	}
	p.metrics.CountMIGDestroyFailure()
	if !known {
		klog.FromContext(ctx).Error(cause, "Destroying a MIG instance failed; the claim is unprepared and the instance destroyed in the background",
			"claim", rec.Claim, "device", d.Device, "gpu", d.GPUIndex, "gpuInstance", d.MIG.GPUInstanceID, "placement", d.MIG.Placement)
		p.event(corev1.EventTypeWarning, ReasonMIGDestroyDeferred, "DestroyMIGInstance",
			"MIG instance %s (profile %s at %d+%d, GPU instance %d) of claim %s on GPU %s could not be destroyed (%v): retrying in the background; its placement is offered to no other claim meanwhile",
			d.Device, d.MIG.Profile, d.MIG.Placement.Start, d.MIG.Placement.Size, d.MIG.GPUInstanceID, rec.Claim, d.GPUUUID, cause)
	}
	return nil
}

// sameRecorded reports whether two records name one instance.
func sameRecorded(a, b *checkpoint.MIG) bool {
	if a.UUID != "" || b.UUID != "" {
		return a.UUID == b.UUID
	}
	return a.GPUInstanceID == b.GPUInstanceID && a.Placement == b.Placement && a.ProfileID == b.ProfileID
}

// RetryPendingDestroys tries once more to destroy each MIG instance an
// unprepare left, and returns how many are still to be destroyed.
func (p *Preparer) RetryPendingDestroys(ctx context.Context) (int, error) {
	unlock, err := p.lockState(ctx, "destroy the MIG instances unprepares left")
	if err != nil {
		return len(p.pendingDestroyList()), err
	}
	defer unlock()
	list, err := p.loadPendingDestroys()
	if err != nil || len(list) == 0 {
		return len(list), err
	}
	var left []pendingDestroy
	var errs []error
	for _, rec := range list {
		done, err := p.retryDestroy(ctx, &rec)
		if isAbandoned(err) {
			return len(list), err
		}
		if err != nil {
			rec.LastError = err.Error()
			errs = append(errs, err)
			p.metrics.CountMIGDestroyFailure()
		}
		if !done {
			left = append(left, rec)
		}
	}
	if err := p.savePendingDestroys(left); err != nil {
		errs = append(errs, err)
	}
	return len(left), errors.Join(errs...)
}

// retryDestroy destroys one recorded instance, and reports whether it is
// gone.
func (p *Preparer) retryDestroy(ctx context.Context, rec *pendingDestroy) (bool, error) {
	logger := klog.FromContext(ctx).WithValues("claim", rec.Claim, "device", rec.Device, "gpuUUID", rec.GPUUUID)
	g, _ := p.gpuByUUID(rec.GPUUUID)
	if g == nil {
		logger.Info("GPU of a MIG instance to destroy is not on this node; its instance went with it")
		p.destroyedLater(rec, "its GPU is no longer on this node")
		return true, nil
	}
	g.Lock()
	index := g.gpu.Index
	existing, err := p.nvml.MIGDevices(ctx, index)
	if err != nil {
		// Not under g's lock: gpuLost takes the inventory's, which
		// SetInventory holds while it waits for g's.
		g.Unlock()
		if p.gpuLost(ctx, index) {
			p.destroyedLater(rec, "its GPU is lost")
			return true, nil
		}
		return false, fmt.Errorf("MIG instance %s of claim %s: list MIG devices of GPU %d: %w", rec.Device, rec.Claim, index, err)
	}
	defer g.Unlock()
	i := slices.IndexFunc(existing, func(m tnvml.MIGDevice) bool { return sameMIG(&rec.MIG, m) })
	if i < 0 {
		// NOT_FOUND, or MIG mode off after a reset: nothing to destroy.
		logger.Info("MIG instance to destroy is gone")
		p.destroyedLater(rec, "it is gone (GPU reset or reboot)")
		return true, p.migModeOffIfUnused(ctx, g)
	}
	if other, ok := p.migOwner("", index, existing[i]); ok {
		// Recorded again by a claim (it cannot be: its placement was held),
		// so not this record's to destroy.
		logger.Info("MIG instance to destroy is owned by a claim; leaving it", "owner", other)
		return true, nil
	}
	if err := p.nvml.DestroyMIGDevice(ctx, index, existing[i].GPUInstanceID); err != nil {
		return false, fmt.Errorf("destroy MIG instance %s of claim %s on GPU %d: %w", rec.Device, rec.Claim, index, err)
	}
	logger.Info("Destroyed a MIG instance an unprepare had left")
	p.destroyedLater(rec, "destroyed")
	return true, p.migModeOffIfUnused(ctx, g)
}

func (p *Preparer) destroyedLater(rec *pendingDestroy, how string) {
	p.event(corev1.EventTypeNormal, ReasonMIGDestroyed, "DestroyMIGInstance",
		"MIG instance %s (profile %s at %d+%d) of claim %s on GPU %s, left by its unprepare since %s: %s; its placement is free again",
		rec.Device, rec.MIG.Profile, rec.MIG.Placement.Start, rec.MIG.Placement.Size, rec.Claim, rec.GPUUUID, rec.Since.Format(time.RFC3339), how)
}

// gpuByUUID returns the state of the GPU with the UUID and its index, nil
// for none. Its GPU lock must not be held.
func (p *Preparer) gpuByUUID(uuid string) (*gpuState, int) {
	p.invMu.RLock()
	defer p.invMu.RUnlock()
	for index, g := range p.gpus {
		g.Lock()
		found := g.gpu.UUID == uuid
		g.Unlock()
		if found {
			return g, index
		}
	}
	return nil, goneGPU
}

// WatchPendingDestroys destroys the MIG instances unprepares left, at
// once and then every interval, doubling the wait up to
// maxPendingDestroyBackoff while some will not go, until ctx ends.
func (p *Preparer) WatchPendingDestroys(ctx context.Context, interval time.Duration) error {
	delay := interval
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		}
		left, err := p.RetryPendingDestroys(ctx)
		if err != nil {
			klog.FromContext(ctx).V(2).Info("MIG instances left by unprepares are not all destroyed yet", "left", left, "err", err)
		}
		if left > 0 {
			delay = min(2*delay, maxPendingDestroyBackoff)
		} else {
			delay = interval
		}
		timer.Reset(delay)
	}
}

// maxPendingDestroyBackoff bounds the wait between retries: a process that
// holds an instance may stay for long, but its placement is withheld.
const maxPendingDestroyBackoff = 5 * time.Minute
