package prepare

import (
	configapi "github.com/tessera-gpu/tessera/api/config/v1alpha1"
	"github.com/tessera-gpu/tessera/internal/checkpoint"
	"github.com/tessera-gpu/tessera/internal/sharing"
)

// daemon is the claim's own MPS control daemon, with the sum of its MPS
// devices' limits (plan keeps them on one GPU), when it has any.
func (p *Preparer) daemon(c *checkpoint.Claim) (sharing.Daemon, bool) {
	d := sharing.Daemon{ID: c.UID}
	found := false
	for _, dev := range c.Devices {
		if dev.Sharing == nil || dev.Sharing.Strategy != string(configapi.MPSStrategy) {
			continue
		}
		found = true
		d.GPUUUID = dev.GPUUUID
		d.ActiveThreadPercentage += dev.Sharing.ActiveThreadPercentage
		d.PinnedMemoryLimitBytes += dev.Sharing.PinnedMemoryLimitBytes
	}
	d.ActiveThreadPercentage = min(d.ActiveThreadPercentage, 100)
	return d, found
}

func (p *Preparer) mpsRoot() string { return sharing.MPSRoot(p.stateDir) }
