package prepare

import (
	"fmt"
	"maps"
	"slices"

	"github.com/tessera-gpu/tessera/internal/checkpoint"
	"github.com/tessera-gpu/tessera/pkg/partition"
)

// checkNotHeld refuses to prepare a device that overlaps what another claim
// of the checkpoint holds on the same GPU: the same device (but for shares),
// a device that needs the same counters (a whole GPU and anything on it, MIG
// placements that share memory slices or an engine), or shares that together
// ask for more of the time-shared GPU than it has.
//
// The scheduler never allocates two such devices while both claims exist,
// but a claim can stop existing while its pod still runs (a tenant strips the
// claim's delete-protection finalizer and deletes it; the kubelet prepares
// only when it starts a pod, so the running pod keeps the devices): the
// scheduler then counts them free and allocates them again. The checkpoint
// still knows who holds them; the second prepare must fail, naming the
// holder, as upstream expects a driver to (kubernetes/kubernetes#141471).
// Called with the state lock held.
func (p *Preparer) checkNotHeld(uid string, devices []checkpoint.Device) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, want := range devices {
		if want.AdminAccess {
			// Admin access is granted beside whatever holds the GPU.
			continue
		}
		wantInfo, ok := p.device(want.Device)
		if !ok {
			continue // plan refused it already
		}
		var shareMemory, shareCompute int64
		var sharers []string
		for _, other := range slices.Sorted(maps.Keys(p.cp.Claims)) {
			if other == uid {
				continue
			}
			c := p.cp.Claims[other]
			for _, held := range c.Devices {
				if held.GPUUUID != want.GPUUUID || held.AdminAccess {
					continue
				}
				if held.Share != nil && want.Share != nil {
					shareMemory += held.Share.MemoryBytes
					shareCompute += held.Share.Compute
					sharers = append(sharers, holder(c))
					continue
				}
				heldInfo, known := p.device(held.Device)
				if !known || overlaps(wantInfo, heldInfo.device) {
					return fmt.Errorf("device %s overlaps %s, which claim %s holds on this node: the scheduler allocated it again while the claim's pod still runs",
						want.Device, held.Device, holder(c))
				}
			}
		}
		if err := p.checkNotPendingDestroy(want, wantInfo); err != nil {
			return err
		}
		if want.Share == nil || len(sharers) == 0 {
			continue
		}
		memory := int64(wantInfo.gpu.MemoryBytes)
		if shareMemory+want.Share.MemoryBytes > memory || shareCompute+want.Share.Compute > 100 {
			return fmt.Errorf("share of %s (%d bytes, %d%% compute) does not fit beside the shares that claims %v hold on this node (%d bytes, %d%% compute of %d bytes, 100%%)",
				want.Device, want.Share.MemoryBytes, want.Share.Compute, sharers, shareMemory, shareCompute, memory)
		}
	}
	return nil
}

// overlaps reports whether two devices of one GPU cannot both be held: they
// draw more of some counter of the GPU's counter set than it has.
func overlaps(a deviceInfo, b partition.Device) bool {
	if a.device.Name == b.Name {
		return true
	}
	for c, n := range a.device.Consumes {
		if m, ok := b.Consumes[c]; ok && n+m > a.counters[c] {
			return true
		}
	}
	return false
}

func holder(c *checkpoint.Claim) string {
	return fmt.Sprintf("%s/%s (%s)", c.Namespace, c.Name, c.UID)
}

// checkNotPendingDestroy refuses a device that overlaps a MIG instance an
// unprepare could not destroy: it still holds its placement.
func (p *Preparer) checkNotPendingDestroy(want checkpoint.Device, wantInfo deviceInfo) error {
	for _, rec := range p.pendingDestroyList() {
		if rec.GPUUUID != want.GPUUUID {
			continue
		}
		heldInfo, known := p.device(rec.Device)
		if !known || overlaps(wantInfo, heldInfo.device) {
			return fmt.Errorf("device %s overlaps MIG instance %s of claim %s, which its unprepare could not destroy (%s): it is destroyed in the background",
				want.Device, rec.Device, rec.Claim, rec.LastError)
		}
	}
	return nil
}
