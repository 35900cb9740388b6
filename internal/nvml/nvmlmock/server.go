package nvmlmock

import (
	"fmt"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/google/uuid"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/gpus"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
)

// Server is a mock NVML server with hardware-accurate MIG behaviour.
type Server struct {
	*server.Server
	Model Model

	strict []*strictDevice
	// onActivation is called during MIG mode switches (OnMIGModeActivation).
	hookMu       sync.Mutex
	onActivation func(index int)
	// missing holds the GPUs hidden from enumeration (see SetMissing).
	enumMu  sync.Mutex
	missing map[int]bool
	// statePath, when set, is where the MIG state is saved (see Persist).
	statePath string
	saveMu    sync.Mutex
	// telemetry, when set, is the telemetry file the mock follows (see
	// FollowTelemetry).
	telemetry *telemetryFile
}

// New builds a mock server of the model with count GPUs. seed makes UUIDs
// differ between simulated nodes while staying the same across restarts.
func New(model string, count int, seed string) (*Server, error) {
	m, ok := Models[model]
	if !ok {
		return nil, fmt.Errorf("unknown mock NVML model %q (known: dgxa100, dgxh100, dgxh200, dgxb200)", model)
	}
	if count < 1 || count > 64 {
		return nil, fmt.Errorf("mock NVML model %s: GPU count %d out of range 1-64", model, count)
	}
	base, err := server.New(
		server.WithGPUs(gpus.Multiple(count, m.GPU)...),
		server.WithDriverVersion("550.54.15"),
		server.WithNVMLVersion("12.550.54.15"),
		server.WithCUDADriverVersion(12040),
	)
	if err != nil {
		return nil, fmt.Errorf("mock NVML model %s: %w", model, err)
	}
	s := &Server{Server: base, Model: m}
	for _, d := range base.Devices {
		dev := d.(*server.Device)
		dev.UUID = "GPU-" + uuid.NewSHA1(uuid.NameSpaceOID, fmt.Appendf(nil, "tessera/%s/%s/%d", seed, model, dev.Index)).String()
		dev.PciBusID = fmt.Sprintf("0000:%02x:00.0", 0x10+dev.Index*0x10)
		dev.MemoryInfo.Free = dev.MemoryInfo.Total
		if m.MIGEnabled {
			dev.MigMode = nvml.DEVICE_MIG_ENABLE
		}
		s.strict = append(s.strict, newStrictDevice(dev, m, s.changed, s.activated))
	}
	s.installEnumeration()
	s.installTelemetry()
	return s, nil
}

// strictDevice replaces go-nvml's permissive MIG functions with ones that
// refuse what the hardware refuses.
type strictDevice struct {
	dev     *server.Device
	model   Model
	pending int
	// busy, noMemoryInfo and modeSets model conditions of the hardware
	// (see hardware.go).
	busy       bool
	needsReset bool
	// inUseDestroys is how many more MIG destroys answer IN_USE (see
	// FailDestroys).
	inUseDestroys atomic.Int64
	// resets counts the GPU's resets, which MIG UUIDs depend on.
	resets       int
	noMemoryInfo bool
	modeSets     int
	// usage is what the GPU is doing (see telemetry.go).
	usage *deviceUsage
	// changed is called, without locks held, after every change of the MIG
	// state; what it returns is the changing call's result.
	changed func() nvml.Return
	// activated is called, without locks held, while a MIG mode switch
	// activates.
	activated func(index int)
}

func newStrictDevice(dev *server.Device, m Model, changed func() nvml.Return, activated func(index int)) *strictDevice {
	s := &strictDevice{dev: dev, model: m, pending: dev.MigMode, changed: changed, activated: activated}
	dev.GetPciInfoFunc = s.pciInfo
	s.installHardware()
	dev.CreateGpuInstanceWithPlacementFunc = s.createWithPlacement
	dev.CreateGpuInstanceFunc = s.create
	dev.GetGpuInstanceByIdFunc = s.byID
	dev.GetMaxMigDeviceCountFunc = func() (int, nvml.Return) { return 7, nvml.SUCCESS }
	dev.GetMigDeviceHandleByIndexFunc = s.migDevice
	return s
}

func (s *strictDevice) pciInfo() (nvml.PciInfo, nvml.Return) {
	p := nvml.PciInfo{PciDeviceId: s.dev.Config.PciDeviceId}
	id := "0000" + s.dev.PciBusID // NVML reports an 8-digit domain
	for i := 0; i < len(id) && i < len(p.BusId)-1; i++ {
		p.BusId[i] = int8(id[i])
	}
	return p, nvml.SUCCESS
}

// createWithPlacement refuses a placement the profile does not have, one that
// overlaps an existing instance, more instances of a profile than it allows,
// and more media engines than the GPU has.
func (s *strictDevice) createWithPlacement(info *nvml.GpuInstanceProfileInfo, placement *nvml.GpuInstancePlacement) (nvml.GpuInstance, nvml.Return) {
	gi, ret := s.createWithPlacementLocked(info, placement)
	if ret != nvml.SUCCESS {
		return nil, ret
	}
	return gi, s.changed()
}

func (s *strictDevice) createWithPlacementLocked(info *nvml.GpuInstanceProfileInfo, placement *nvml.GpuInstancePlacement) (nvml.GpuInstance, nvml.Return) {
	s.dev.Lock()
	defer s.dev.Unlock()
	if ret := s.admit(info, *placement); ret != nvml.SUCCESS {
		return nil, ret
	}
	gi := s.addGPUInstance(nvml.GpuInstanceInfo{
		Device:    s.dev,
		Id:        s.dev.GpuInstanceCounter,
		ProfileId: info.Id,
		Placement: *placement,
	})
	s.dev.GpuInstanceCounter++
	return gi, nvml.SUCCESS
}

// addGPUInstance adds a GPU instance to the device. Must be called with the
// device locked.
func (s *strictDevice) addGPUInstance(info nvml.GpuInstanceInfo) *server.GpuInstance {
	gi := server.NewGpuInstanceFromInfo(info, s.dev.Config.MIGProfiles)
	s.strictGPUInstance(gi)
	s.dev.GpuInstances[gi] = struct{}{}
	return gi
}

func (s *strictDevice) create(info *nvml.GpuInstanceProfileInfo) (nvml.GpuInstance, nvml.Return) {
	for _, p := range s.dev.Config.MIGProfiles.GpuInstancePlacements[int(info.Id)] {
		s.dev.RLock()
		ret := s.admit(info, p)
		s.dev.RUnlock()
		if ret == nvml.SUCCESS {
			return s.createWithPlacement(info, &p)
		}
	}
	return nil, nvml.ERROR_INSUFFICIENT_RESOURCES
}

// admit must be called with the device lock held.
func (s *strictDevice) admit(info *nvml.GpuInstanceProfileInfo, placement nvml.GpuInstancePlacement) nvml.Return {
	if s.migOff() {
		// nvmlDeviceCreateGpuInstanceWithPlacement: "NVML_ERROR_NOT_SUPPORTED
		// If device doesn't have MIG mode enabled"
		return nvml.ERROR_NOT_SUPPORTED
	}
	profiles := s.dev.Config.MIGProfiles
	profile, ok := profiles.GpuInstanceProfiles[int(info.Id)]
	if !ok {
		return nvml.ERROR_INVALID_ARGUMENT
	}
	valid := false
	for _, p := range profiles.GpuInstancePlacements[int(info.Id)] {
		valid = valid || p == placement
	}
	if !valid {
		return nvml.ERROR_INVALID_ARGUMENT
	}
	full := profiles.GpuInstanceProfiles[nvml.GPU_INSTANCE_PROFILE_7_SLICE]
	sameProfile, ofa, jpeg, dec, enc := 1, profile.OfaCount, profile.JpegCount, profile.DecoderCount, profile.EncoderCount
	for gi := range s.dev.GpuInstances {
		other := gi.Info.Placement
		if placement.Start < other.Start+other.Size && other.Start < placement.Start+placement.Size {
			return nvml.ERROR_INSUFFICIENT_RESOURCES
		}
		op := profiles.GpuInstanceProfiles[int(gi.Info.ProfileId)]
		if gi.Info.ProfileId == info.Id {
			sameProfile++
		}
		ofa += op.OfaCount
		jpeg += op.JpegCount
		dec += op.DecoderCount
		enc += op.EncoderCount
	}
	if sameProfile > int(profile.InstanceCount) ||
		ofa > max(full.OfaCount, profile.OfaCount) || jpeg > max(full.JpegCount, profile.JpegCount) ||
		dec > max(full.DecoderCount, profile.DecoderCount) || enc > max(full.EncoderCount, profile.EncoderCount) {
		return nvml.ERROR_INSUFFICIENT_RESOURCES
	}
	return nvml.SUCCESS
}

func (s *strictDevice) byID(id int) (nvml.GpuInstance, nvml.Return) {
	s.dev.RLock()
	defer s.dev.RUnlock()
	if s.migOff() {
		// nvmlDeviceGetGpuInstanceById: "NVML_ERROR_NOT_SUPPORTED If
		// device doesn't have MIG mode enabled"
		return nil, nvml.ERROR_NOT_SUPPORTED
	}
	for gi := range s.dev.GpuInstances {
		if int(gi.Info.Id) == id {
			return gi, nvml.SUCCESS
		}
	}
	return nil, nvml.ERROR_NOT_FOUND
}

// migDevice enumerates MIG devices in GPU-instance order, with UUIDs derived
// from the parent's so they are stable.
func (s *strictDevice) migDevice(index int) (nvml.Device, nvml.Return) {
	s.dev.RLock()
	defer s.dev.RUnlock()
	ids := make([]int, 0, len(s.dev.GpuInstances))
	for gi := range s.dev.GpuInstances {
		ids = append(ids, int(gi.Info.Id))
	}
	sort.Ints(ids)
	if index < 0 || index >= len(ids) {
		return nil, nvml.ERROR_NOT_FOUND
	}
	giID := ids[index]
	name := fmt.Appendf(nil, "%s/%d", s.dev.UUID, giID)
	if s.resets > 0 {
		// A MIG device created after a reset is a new one, with a UUID
		// of its own, although NVML numbers instances from 0 again.
		name = fmt.Appendf(nil, "%s/reset-%d/%d", s.dev.UUID, s.resets, giID)
	}
	migUUID := "MIG-" + uuid.NewSHA1(uuid.NameSpaceOID, name).String()
	return &mock.Device{
		GetUUIDFunc:              func() (string, nvml.Return) { return migUUID, nvml.SUCCESS },
		GetGpuInstanceIdFunc:     func() (int, nvml.Return) { return giID, nvml.SUCCESS },
		GetComputeInstanceIdFunc: func() (int, nvml.Return) { return 0, nvml.SUCCESS },
		IsMigDeviceHandleFunc:    func() (bool, nvml.Return) { return true, nvml.SUCCESS },
	}, nvml.SUCCESS
}

// strictGPUInstance refuses to destroy a GPU instance that still holds
// compute instances, as NVML does, and reports every change of its compute
// instances.
func (s *strictDevice) strictGPUInstance(gi *server.GpuInstance) {
	destroy := gi.DestroyFunc
	gi.DestroyFunc = func() nvml.Return {
		gi.RLock()
		busy := len(gi.ComputeInstances) > 0
		gi.RUnlock()
		if busy || s.inUseByProcesses() {
			return nvml.ERROR_IN_USE
		}
		if ret := destroy(); ret != nvml.SUCCESS {
			return ret
		}
		return s.changed()
	}
	create := gi.CreateComputeInstanceFunc
	gi.CreateComputeInstanceFunc = func(info *nvml.ComputeInstanceProfileInfo) (nvml.ComputeInstance, nvml.Return) {
		ci, ret := create(info)
		if ret != nvml.SUCCESS {
			return nil, ret
		}
		s.strictComputeInstance(ci.(*server.ComputeInstance))
		return ci, s.changed()
	}
}

func (s *strictDevice) strictComputeInstance(ci *server.ComputeInstance) {
	destroy := ci.DestroyFunc
	ci.DestroyFunc = func() nvml.Return {
		if s.inUseByProcesses() {
			return nvml.ERROR_IN_USE
		}
		if ret := destroy(); ret != nvml.SUCCESS {
			return ret
		}
		return s.changed()
	}
}
