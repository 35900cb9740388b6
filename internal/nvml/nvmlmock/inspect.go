package nvmlmock

import (
	"fmt"
	"sort"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
)

// The methods here let tests look at and set up the mock's hardware state
// directly, beside the driver, so that they need no go-nvml import of their own
// (only internal/nvml talks to go-nvml, tests included).

// GPUState is what one mock GPU holds, as a test compares it.
type GPUState struct {
	// MIGMode is the current MIG mode as NVML reports it: 0 off, 1 on.
	MIGMode int
	// Instances are the GPU instances, ordered by placement.
	Instances []GPUInstance
}

// GPUInstance is one GPU instance on a mock GPU.
type GPUInstance struct {
	ProfileID, Start, Size int
	// ComputeInstances counts the compute instances inside it.
	ComputeInstances int
}

// GPU returns the state of the GPU with the given index.
func (s *Server) GPU(index int) GPUState {
	dev := s.device(index)
	dev.RLock()
	defer dev.RUnlock()
	st := GPUState{MIGMode: dev.MigMode}
	for gi := range dev.GpuInstances {
		gi.RLock()
		st.Instances = append(st.Instances, GPUInstance{
			ProfileID:        int(gi.Info.ProfileId),
			Start:            int(gi.Info.Placement.Start),
			Size:             int(gi.Info.Placement.Size),
			ComputeInstances: len(gi.ComputeInstances),
		})
		gi.RUnlock()
	}
	sort.Slice(st.Instances, func(i, j int) bool { return st.Instances[i].Start < st.Instances[j].Start })
	return st
}

// CreateGPUInstance creates a bare GPU instance (no compute instance) of the
// profile at a placement, as a crashed driver or an admin would leave it. The
// mock refuses what the hardware refuses.
func (s *Server) CreateGPUInstance(index, profileID, start, size int) error {
	dev := s.device(index)
	info, ret := dev.GetGpuInstanceProfileInfo(profileID)
	if ret != nvml.SUCCESS {
		return fmt.Errorf("profile %d on mock GPU %d: %w", profileID, index, ret)
	}
	placement := nvml.GpuInstancePlacement{Start: uint32(start), Size: uint32(size)}
	if _, ret := dev.CreateGpuInstanceWithPlacement(&info, &placement); ret != nvml.SUCCESS {
		return fmt.Errorf("create GPU instance of profile %d at %d+%d on mock GPU %d: %w", profileID, start, size, index, ret)
	}
	return nil
}

// ProfileID returns the NVML profile ID of a MIG profile name, e.g. "1g.18gb".
func (s *Server) ProfileID(name string) (int, error) {
	for id, n := range s.Model.ProfileNames {
		if n == name {
			return id, nil
		}
	}
	return 0, fmt.Errorf("mock NVML model %s has no MIG profile %q", s.Model.Name, name)
}

// ReuseGPUInstanceIDs makes the mock reuse GPU instance IDs once a GPU has at
// most one instance left, as NVML does; go-nvml's mock counts up forever.
// Benchmarks that create and destroy many instances call it between rounds.
func (s *Server) ReuseGPUInstanceIDs() {
	for i := range s.Devices {
		dev := s.device(i)
		dev.Lock()
		if len(dev.GpuInstances) <= 1 {
			dev.GpuInstanceCounter = uint32(len(dev.GpuInstances))
		}
		dev.Unlock()
	}
}

func (s *Server) device(index int) *server.Device {
	return s.Devices[index].(*server.Device)
}
