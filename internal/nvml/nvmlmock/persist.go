package nvmlmock

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
)

// StateFileName is the name the plugin gives a mock's state file in its state
// directory (see Persist).
const StateFileName = "mock-nvml.json"

// stateVersion is the version of the state file's format.
const stateVersion = 1

// savedState is the MIG state of the mock's GPUs as the state file keeps it.
type savedState struct {
	Version int        `json:"version"`
	GPUs    []savedGPU `json:"gpus"`
}

type savedGPU struct {
	MIGMode        int `json:"migMode"`
	PendingMIGMode int `json:"pendingMigMode"`
	// NextGPUInstanceID keeps IDs from repeating across a restart while an
	// instance that had the ID may still be in use somewhere.
	NextGPUInstanceID uint32 `json:"nextGpuInstanceID"`
	// Resets counts the GPU's resets, so that MIG UUIDs stay those of the
	// instances that exist across a restart of the process.
	Resets    int             `json:"resets,omitempty"`
	Instances []savedInstance `json:"instances,omitempty"`
}

type savedInstance struct {
	ID                    uint32                 `json:"id"`
	ProfileID             uint32                 `json:"profileID"`
	Start                 uint32                 `json:"start"`
	Size                  uint32                 `json:"size"`
	NextComputeInstanceID uint32                 `json:"nextComputeInstanceID"`
	ComputeInstances      []savedComputeInstance `json:"computeInstances,omitempty"`
}

type savedComputeInstance struct {
	ID        uint32 `json:"id"`
	ProfileID uint32 `json:"profileID"`
}

// Persist makes the mock's MIG state (MIG mode, GPU and compute instances and
// their IDs) outlive the process, as a GPU's state outlives the processes that
// use the driver: a plugin restarted on a mock then finds the instances it
// created, with the same IDs, as it would on hardware. Persist loads the state
// from path if the file exists, then writes it there after every change
// (atomically: a temporary file renamed over it). A change whose state cannot
// be written fails with ERROR_UNKNOWN, the change itself made.
func (s *Server) Persist(path string) error {
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return fmt.Errorf("read mock NVML state: %w", err)
	default:
		if err := s.load(path, data); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return fmt.Errorf("create directory of mock NVML state: %w", err)
	}
	s.saveMu.Lock()
	s.statePath = path
	s.saveMu.Unlock()
	return s.save()
}

// ReadState returns the MIG state of each GPU saved in a state file (see
// Persist), as GPU returns it for a live mock: what the simulated hardware
// holds, for tests that look at it from outside the process.
func ReadState(path string) ([]GPUState, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read mock NVML state: %w", err)
	}
	var st savedState
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("decode mock NVML state %s: %w", path, err)
	}
	var out []GPUState
	for _, g := range st.GPUs {
		gs := GPUState{MIGMode: g.MIGMode}
		for _, in := range g.Instances {
			gs.Instances = append(gs.Instances, GPUInstance{
				ProfileID: int(in.ProfileID), Start: int(in.Start), Size: int(in.Size), ComputeInstances: len(in.ComputeInstances),
			})
		}
		sort.Slice(gs.Instances, func(i, j int) bool { return gs.Instances[i].Start < gs.Instances[j].Start })
		out = append(out, gs)
	}
	return out, nil
}

// changed saves the state where Persist was called.
func (s *Server) changed() nvml.Return {
	if err := s.save(); err != nil {
		return nvml.ERROR_UNKNOWN
	}
	return nvml.SUCCESS
}

func (s *Server) save() error {
	s.saveMu.Lock()
	defer s.saveMu.Unlock()
	if s.statePath == "" {
		return nil
	}
	st := savedState{Version: stateVersion}
	for _, d := range s.strict {
		st.GPUs = append(st.GPUs, d.saved())
	}
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("encode mock NVML state: %w", err)
	}
	tmp := s.statePath + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("write mock NVML state: %w", err)
	}
	if err := os.Rename(tmp, s.statePath); err != nil {
		return fmt.Errorf("write mock NVML state: %w", err)
	}
	return nil
}

func (s *Server) load(path string, data []byte) error {
	var st savedState
	if err := json.Unmarshal(data, &st); err != nil {
		return fmt.Errorf("decode mock NVML state %s: %w", path, err)
	}
	if st.Version != stateVersion {
		return fmt.Errorf("mock NVML state %s has version %d, want %d", path, st.Version, stateVersion)
	}
	if len(st.GPUs) != len(s.strict) {
		return fmt.Errorf("mock NVML state %s is of %d GPUs, the mock has %d", path, len(st.GPUs), len(s.strict))
	}
	for i, g := range st.GPUs {
		if err := s.strict[i].restore(g); err != nil {
			return fmt.Errorf("mock NVML state %s, GPU %d: %w", path, i, err)
		}
	}
	return nil
}

// saved returns the device's MIG state, instances ordered by ID.
func (s *strictDevice) saved() savedGPU {
	s.dev.RLock()
	defer s.dev.RUnlock()
	g := savedGPU{MIGMode: s.dev.MigMode, PendingMIGMode: s.pending, NextGPUInstanceID: s.dev.GpuInstanceCounter, Resets: s.resets}
	for gi := range s.dev.GpuInstances {
		gi.RLock()
		in := savedInstance{
			ID: gi.Info.Id, ProfileID: gi.Info.ProfileId,
			Start: gi.Info.Placement.Start, Size: gi.Info.Placement.Size,
			NextComputeInstanceID: gi.ComputeInstanceCounter,
		}
		for ci := range gi.ComputeInstances {
			in.ComputeInstances = append(in.ComputeInstances, savedComputeInstance{ID: ci.Info.Id, ProfileID: ci.Info.ProfileId})
		}
		gi.RUnlock()
		sort.Slice(in.ComputeInstances, func(i, j int) bool { return in.ComputeInstances[i].ID < in.ComputeInstances[j].ID })
		g.Instances = append(g.Instances, in)
	}
	sort.Slice(g.Instances, func(i, j int) bool { return g.Instances[i].ID < g.Instances[j].ID })
	return g
}

// restore replaces the device's MIG state with a saved one. The instances
// are admitted as new ones are, so a state file that the hardware could not
// hold is refused.
func (s *strictDevice) restore(g savedGPU) error {
	s.dev.Lock()
	defer s.dev.Unlock()
	s.dev.MigMode, s.pending, s.resets = g.MIGMode, g.PendingMIGMode, g.Resets
	s.dev.GpuInstances = map[*server.GpuInstance]struct{}{}
	s.dev.GpuInstanceCounter = g.NextGPUInstanceID
	for _, in := range g.Instances {
		if in.ID >= g.NextGPUInstanceID {
			return fmt.Errorf("GPU instance %d: ID not below the next ID %d", in.ID, g.NextGPUInstanceID)
		}
		placement := nvml.GpuInstancePlacement{Start: in.Start, Size: in.Size}
		info, ok := s.dev.Config.MIGProfiles.GpuInstanceProfiles[int(in.ProfileID)]
		ret := nvml.ERROR_INVALID_ARGUMENT
		if ok {
			ret = s.admit(&info, placement)
		}
		if ret != nvml.SUCCESS {
			return fmt.Errorf("GPU instance %d of profile %d at %d+%d: %w", in.ID, in.ProfileID, in.Start, in.Size, ret)
		}
		gi := s.addGPUInstance(nvml.GpuInstanceInfo{Device: s.dev, Id: in.ID, ProfileId: in.ProfileID, Placement: placement})
		gi.ComputeInstanceCounter = in.NextComputeInstanceID
		for _, c := range in.ComputeInstances {
			ci := server.NewComputeInstanceFromInfo(nvml.ComputeInstanceInfo{Device: s.dev, GpuInstance: gi, Id: c.ID, ProfileId: c.ProfileID})
			s.strictComputeInstance(ci)
			gi.ComputeInstances[ci] = struct{}{}
		}
	}
	return nil
}
