package prepare

import (
	"fmt"

	tcdi "github.com/tessera-gpu/tessera/internal/cdi"
	"github.com/tessera-gpu/tessera/internal/sharing"
)

// CapabilityLookup returns the MIG capability device nodes of a GPU
// instance and its compute instance on the GPU with the given minor.
type CapabilityLookup func(gpuMinor, gpuInstanceID, computeInstanceID int) ([]string, error)

// SimulatedDriver is for mock NVML backends, on machines with no NVIDIA
// driver (the local cluster, e2e): MPS daemons and time slices are
// recorded in memory, and MIG capability minors are made up from the
// instance IDs instead of read from /proc.
func SimulatedDriver() Option {
	return func(p *Preparer) {
		p.mps = sharing.NewFakeMPS()
		p.simulated = true
		p.slicer = &sharing.FakeTimeSlicer{}
		p.capabilities = func(gpuMinor, gi, ci int) ([]string, error) {
			base := 1000 + gpuMinor*1000 + gi*10
			return []string{fmt.Sprintf("/dev/nvidia-caps/nvidia-cap%d", base), fmt.Sprintf("/dev/nvidia-caps/nvidia-cap%d", base+1+ci)}, nil
		}
	}
}

func (p *Preparer) migCapabilities(gpuMinor, gi, ci int) ([]string, error) {
	if p.capabilities != nil {
		return p.capabilities(gpuMinor, gi, ci)
	}
	return tcdi.MIGCapabilityDeviceNodes(p.procRoot, gpuMinor, gi, ci)
}
