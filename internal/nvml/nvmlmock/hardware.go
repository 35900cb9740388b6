package nvmlmock

import (
	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
)

// This file makes the mock answer as nvml.h (go-nvml v0.13.4-1,
// pkg/nvml/nvml.h) documents, where go-nvml's mock server answers SUCCESS:
// each behaviour quotes the sentence it follows. Tests set up the hardware
// conditions (a busy GPU, a GPU without memory info, a reset) through the
// Server's methods below.

// installHardware replaces go-nvml's permissive functions with documented
// ones. Called once per device, by newStrictDevice.
func (s *strictDevice) installHardware() {
	s.dev.GetMigModeFunc = s.migMode
	s.dev.SetMigModeFunc = s.setMigMode
	s.dev.GetGpuInstancesFunc = s.gpuInstances
	s.dev.GetMemoryInfoFunc = s.memoryInfo
	s.dev.GetMemoryInfo_v2Func = s.memoryInfoV2
}

func (s *strictDevice) migMode() (int, int, nvml.Return) {
	s.dev.RLock()
	defer s.dev.RUnlock()
	// nvmlDeviceGetMigMode: "The "pending" MIG mode refers to the target
	// mode following the next activation trigger."
	return s.dev.MigMode, s.pending, nvml.SUCCESS
}

func (s *strictDevice) setMigMode(mode int) (nvml.Return, nvml.Return) {
	ret, activation, switched := s.setMigModeLocked(mode)
	if ret != nvml.SUCCESS {
		return ret, activation
	}
	if switched {
		// "This API may unbind or reset the device to activate the
		// requested mode."
		s.activated(s.dev.Index)
	}
	return s.changed(), activation
}

// setMigModeLocked changes the state and reports whether the mode switched.
func (s *strictDevice) setMigModeLocked(mode int) (ret, activation nvml.Return, switched bool) {
	s.dev.Lock()
	defer s.dev.Unlock()
	s.modeSets++
	if mode != nvml.DEVICE_MIG_DISABLE && mode != nvml.DEVICE_MIG_ENABLE {
		// "NVML_ERROR_INVALID_ARGUMENT If device, mode or activationStatus
		// are invalid"
		return nvml.ERROR_INVALID_ARGUMENT, nvml.SUCCESS, false
	}
	// The call records the requested mode as pending whatever happens to
	// its activation: "Changing MIG modes may require device unbind or
	// reset. The "pending" MIG mode refers to the target mode following
	// the next activation trigger." (nvmlDeviceGetMigMode)
	s.pending = mode
	// "This API may unbind or reset the device to activate the requested
	// mode." and "activationStatus would return the appropriate error code
	// upon unsuccessful activation. For example, if device unbind fails
	// because the device isn't idle, NVML_ERROR_IN_USE would be returned.
	// The caller of this API is expected to idle the device and retry
	// setting the mode." The call itself succeeds. A process on the GPU
	// (a monitoring client is enough) makes it busy even for the mode it
	// is in; GPU instances make it busy for a change of mode.
	if s.busy || (mode != s.dev.MigMode && len(s.dev.GpuInstances) > 0) {
		return nvml.SUCCESS, nvml.ERROR_IN_USE, false
	}
	if mode == s.dev.MigMode {
		return nvml.SUCCESS, nvml.SUCCESS, false
	}
	if !s.model.ToggleWithoutReset || s.needsReset {
		// "On certain platforms like pass-through virtualization, where
		// reset functionality may not be exposed directly, VM reboot is
		// required. activationStatus would return
		// NVML_ERROR_RESET_REQUIRED for such cases." The A100 mock stands
		// for a GPU whose mode only changes at its next reset.
		return nvml.SUCCESS, nvml.ERROR_RESET_REQUIRED, false
	}
	s.dev.MigMode = mode
	return nvml.SUCCESS, nvml.SUCCESS, true
}

// migOff must be called with the device locked.
func (s *strictDevice) migOff() bool { return s.dev.MigMode != nvml.DEVICE_MIG_ENABLE }

func (s *strictDevice) gpuInstances(info *nvml.GpuInstanceProfileInfo) ([]nvml.GpuInstance, nvml.Return) {
	// go-nvml's wrapper refuses a profile with no instances before calling
	// NVML (pkg/nvml/device.go, GetGpuInstances: "if count == 0 { return
	// nil, ERROR_INVALID_ARGUMENT }").
	if info == nil || info.InstanceCount == 0 {
		return nil, nvml.ERROR_INVALID_ARGUMENT
	}
	s.dev.RLock()
	defer s.dev.RUnlock()
	if s.migOff() {
		// nvmlDeviceGetGpuInstances: "NVML_ERROR_NOT_SUPPORTED If device
		// doesn't have MIG mode enabled"
		return nil, nvml.ERROR_NOT_SUPPORTED
	}
	var out []nvml.GpuInstance
	for gi := range s.dev.GpuInstances {
		if gi.Info.ProfileId == info.Id {
			out = append(out, gi)
		}
	}
	return out, nvml.SUCCESS
}

func (s *strictDevice) memoryInfo() (nvml.Memory, nvml.Return) {
	s.dev.RLock()
	defer s.dev.RUnlock()
	if s.noMemoryInfo {
		// nvmlDeviceGetMemoryInfo: "NVML_ERROR_NOT_SUPPORTED if video
		// memory is unsupported on the device"
		return nvml.Memory{}, nvml.ERROR_NOT_SUPPORTED
	}
	return s.dev.MemoryInfo, nvml.SUCCESS
}

func (s *strictDevice) memoryInfoV2() (nvml.Memory_v2, nvml.Return) {
	s.dev.RLock()
	defer s.dev.RUnlock()
	if s.noMemoryInfo {
		// nvmlDeviceGetMemoryInfo_v2: the same sentence as the v1 call.
		return nvml.Memory_v2{}, nvml.ERROR_NOT_SUPPORTED
	}
	m := s.dev.MemoryInfo
	return nvml.Memory_v2{Version: 2, Total: m.Total, Free: m.Free, Used: m.Used}, nvml.SUCCESS
}

// GpuInstanceProfileInfoV3 answers nvmlDeviceGetGpuInstanceProfileInfoV with
// a v3 structure, the call that carries a profile's name. go-nvml's handler
// for it is bound to its cgo device type, so the NVML library reaches this
// through a seam of its own (see internal/nvml.Open).
func (s *Server) GpuInstanceProfileInfoV3(dev nvml.Device, profileID int) (nvml.GpuInstanceProfileInfo_v3, nvml.Return) {
	d := s.strictOf(dev)
	if d == nil {
		return nvml.GpuInstanceProfileInfo_v3{}, nvml.ERROR_INVALID_ARGUMENT
	}
	d.dev.RLock()
	off := d.migOff()
	d.dev.RUnlock()
	if off {
		// "NVML_ERROR_NOT_SUPPORTED If device doesn't have MIG mode
		// enabled or profile isn't supported"
		return nvml.GpuInstanceProfileInfo_v3{}, nvml.ERROR_NOT_SUPPORTED
	}
	info, ok := d.dev.Config.MIGProfiles.GpuInstanceProfiles[profileID]
	if !ok {
		return nvml.GpuInstanceProfileInfo_v3{}, nvml.ERROR_NOT_SUPPORTED
	}
	out := nvml.GpuInstanceProfileInfo_v3{
		Version: 3, Id: info.Id, SliceCount: info.SliceCount, InstanceCount: info.InstanceCount,
		MultiprocessorCount: info.MultiprocessorCount, CopyEngineCount: info.CopyEngineCount,
		DecoderCount: info.DecoderCount, EncoderCount: info.EncoderCount, JpegCount: info.JpegCount,
		OfaCount: info.OfaCount, MemorySizeMB: info.MemorySizeMB,
	}
	if name, ok := s.Model.ProfileNames[profileID]; ok {
		// nvidia-smi and NVML show names as "MIG 1g.18gb".
		copyName(out.Name[:], "MIG "+name)
	}
	return out, nvml.SUCCESS
}

func copyName(dst []int8, name string) {
	for i := 0; i < len(name) && i < len(dst)-1; i++ {
		dst[i] = int8(name[i])
	}
}

func (s *Server) strictOf(dev nvml.Device) *strictDevice {
	d, ok := dev.(*server.Device)
	if !ok {
		return nil
	}
	for _, sd := range s.strict {
		if sd.dev == d {
			return sd
		}
	}
	return nil
}

// OnMIGModeActivation sets a function called while a GPU activates a new
// MIG mode, when NVML "may unbind or reset the device" (nvmlDeviceSetMigMode):
// meanwhile the GPU answers as a lost GPU does (see SetLost). Tests use it
// to look at the GPU in the middle of a switch; nil removes it.
func (s *Server) OnMIGModeActivation(f func(index int)) {
	s.hookMu.Lock()
	defer s.hookMu.Unlock()
	s.onActivation = f
}

func (s *Server) activated(index int) {
	s.hookMu.Lock()
	f := s.onActivation
	s.hookMu.Unlock()
	if f == nil {
		return
	}
	s.SetLost(index, true)
	defer s.SetLost(index, false)
	f(index)
}

// SetBusy makes a GPU busy, as a process holding it (a monitoring client is
// enough) does: a MIG mode change, even to the mode it is in, then fails to
// activate with NVML_ERROR_IN_USE.
func (s *Server) SetBusy(index int, busy bool) {
	d := s.strict[index]
	d.dev.Lock()
	defer d.dev.Unlock()
	d.busy = busy
}

// FailDestroys makes the next n attempts to destroy a MIG instance on a GPU
// (its compute instance, or the GPU instance itself) answer
// NVML_ERROR_IN_USE, as a CUDA process still running on it makes NVML do
// (nvml.h, nvmlComputeInstanceDestroy: "NVML_ERROR_IN_USE If the compute
// instance is in use. This error would be returned if processes (e.g. CUDA
// application) are active on the compute instance."; nvmlGpuInstanceDestroy
// likewise "if processes (e.g. CUDA application) or compute instances are
// active on the GPU instance").
func (s *Server) FailDestroys(index, n int) {
	s.strict[index].inUseDestroys.Store(int64(n))
}

// inUseByProcesses reports whether a destroy fails with IN_USE, counting it.
func (s *strictDevice) inUseByProcesses() bool {
	for {
		n := s.inUseDestroys.Load()
		if n <= 0 {
			return false
		}
		if s.inUseDestroys.CompareAndSwap(n, n-1) {
			return true
		}
	}
}

// SetResetRequired makes a GPU need a reset for any MIG mode change, as a
// GPU passed through to a VM does ("On certain platforms like pass-through
// virtualization, where reset functionality may not be exposed directly, VM
// reboot is required", nvmlDeviceSetMigMode), whatever its architecture.
func (s *Server) SetResetRequired(index int, required bool) {
	d := s.strict[index]
	d.dev.Lock()
	defer d.dev.Unlock()
	d.needsReset = required
}

// SetMemoryInfoSupported makes a GPU answer its memory-info calls (v1 and
// v2) with NVML_ERROR_NOT_SUPPORTED, as a GPU without video memory of its
// own does, or normally again.
func (s *Server) SetMemoryInfoSupported(index int, supported bool) {
	d := s.strict[index]
	d.dev.Lock()
	defer d.dev.Unlock()
	d.noMemoryInfo = !supported
}

// MIGModeSets counts the calls to nvmlDeviceSetMigMode on a GPU, whatever
// their result, so that a test can tell that a mode was left alone.
func (s *Server) MIGModeSets(index int) int {
	d := s.strict[index]
	d.dev.RLock()
	defer d.dev.RUnlock()
	return d.modeSets
}

// PendingMIGMode returns the mode a GPU switches to at its next reset.
func (s *Server) PendingMIGMode(index int) int {
	d := s.strict[index]
	d.dev.RLock()
	defer d.dev.RUnlock()
	return d.pending
}

// ResetGPU resets one GPU as nvidia-smi --gpu-reset or a reboot does: every
// GPU and compute instance is gone, and instance IDs start again from 0. The
// pending MIG mode takes effect ("the target mode following the next
// activation trigger", nvmlDeviceGetMigMode), except on GPUs that switch MIG
// mode without a reset (Hopper and later), where MIG mode does not survive a
// reset and comes back off.
func (s *Server) ResetGPU(index int) {
	d := s.strict[index]
	d.reset()
	// A reset is the hardware's, not an NVML call with a result: a state
	// file that cannot be saved shows in the next call that changes state.
	_ = s.changed()
}

// Reboot resets every GPU (see ResetGPU), as a node's reboot does.
func (s *Server) Reboot() {
	for _, d := range s.strict {
		d.reset()
	}
	_ = s.changed() // as in ResetGPU
}

func (s *strictDevice) reset() {
	s.dev.Lock()
	defer s.dev.Unlock()
	if s.model.ToggleWithoutReset {
		s.pending = nvml.DEVICE_MIG_DISABLE
	}
	s.dev.MigMode = s.pending
	s.dev.GpuInstances = map[*server.GpuInstance]struct{}{}
	s.dev.GpuInstanceCounter = 0
	s.resets++
}

// installEnumeration makes NVML's device count and indexes skip the GPUs
// set missing, as NVML enumerates only the GPUs the driver probed.
func (s *Server) installEnumeration() {
	s.missing = map[int]bool{}
	visible := func() []nvml.Device {
		s.enumMu.Lock()
		defer s.enumMu.Unlock()
		var out []nvml.Device
		for i, d := range s.Devices {
			if !s.missing[i] {
				out = append(out, d)
			}
		}
		return out
	}
	s.DeviceGetCountFunc = func() (int, nvml.Return) { return len(visible()), nvml.SUCCESS }
	s.DeviceGetHandleByIndexFunc = func(index int) (nvml.Device, nvml.Return) {
		devs := visible()
		if index < 0 || index >= len(devs) {
			return nil, nvml.ERROR_INVALID_ARGUMENT
		}
		return devs[index], nvml.SUCCESS
	}
}

// SetMissing hides a GPU from enumeration (or shows it again), as a GPU
// that failed to probe after a reboot: NVML then indexes the GPUs after it
// one lower, while their minor numbers (/dev/nvidiaN) stay. The index given
// here, as to every method of the Server, is the GPU's position in the mock
// as built, which is also its minor number.
func (s *Server) SetMissing(index int, missing bool) {
	s.enumMu.Lock()
	defer s.enumMu.Unlock()
	s.missing[index] = missing
}
