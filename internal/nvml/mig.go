package nvml

import (
	"context"
	"fmt"
	"sort"

	gonvml "github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/tessera-gpu/tessera/pkg/inventory"
)

func (l *library) device(gpu int) (gonvml.Device, error) {
	dev, ret := l.nvml.DeviceGetHandleByIndex(gpu)
	return dev, check(ret, "get GPU %d", gpu)
}

func (l *library) SetMIGMode(ctx context.Context, gpu int, enabled bool) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	dev, err := l.device(gpu)
	if err != nil {
		return err
	}
	mode := gonvml.DEVICE_MIG_DISABLE
	if enabled {
		mode = gonvml.DEVICE_MIG_ENABLE
	}
	ret, activation := dev.SetMigMode(mode)
	if err := check(ret, "set MIG mode %d on GPU %d", mode, gpu); err != nil {
		return err
	}
	if activation != gonvml.SUCCESS {
		return fmt.Errorf("set MIG mode %d on GPU %d: %w (%s)", mode, gpu, ErrResetRequired, gonvml.ErrorString(activation))
	}
	current, _, ret := dev.GetMigMode()
	if err := check(ret, "get MIG mode of GPU %d", gpu); err != nil {
		return err
	}
	if current != mode {
		return fmt.Errorf("set MIG mode %d on GPU %d: %w", mode, gpu, ErrResetRequired)
	}
	return nil
}

func (l *library) CreateMIGDevice(ctx context.Context, gpu, profileID int, placement inventory.Placement) (MIGDevice, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := MIGDevice{GPUIndex: gpu, ProfileID: profileID, Placement: placement}
	dev, err := l.device(gpu)
	if err != nil {
		return out, err
	}
	info, ret := dev.GetGpuInstanceProfileInfo(profileID)
	if err := check(ret, "get MIG profile %d on GPU %d", profileID, gpu); err != nil {
		return out, err
	}
	gi, ret := dev.CreateGpuInstanceWithPlacement(&info, &gonvml.GpuInstancePlacement{Start: uint32(placement.Start), Size: uint32(placement.Size)})
	if err := check(ret, "create GPU instance of profile %d at %d+%d on GPU %d", profileID, placement.Start, placement.Size, gpu); err != nil {
		return out, err
	}
	giInfo, ret := gi.GetInfo()
	if err := check(ret, "get GPU instance info on GPU %d", gpu); err != nil {
		_ = gi.Destroy()
		return out, err
	}
	out.GPUInstanceID = int(giInfo.Id)
	ciInfo, err := fullComputeProfile(gi, int(info.SliceCount))
	if err != nil {
		_ = gi.Destroy()
		return out, fmt.Errorf("GPU instance %d on GPU %d: %w", out.GPUInstanceID, gpu, err)
	}
	ci, ret := gi.CreateComputeInstance(&ciInfo)
	if err := check(ret, "create compute instance in GPU instance %d on GPU %d", out.GPUInstanceID, gpu); err != nil {
		if dret := gi.Destroy(); dret != gonvml.SUCCESS {
			return out, fmt.Errorf("%w; rolling back: %w", err, check(dret, "destroy GPU instance %d on GPU %d", out.GPUInstanceID, gpu))
		}
		return out, err
	}
	if info, ret := ci.GetInfo(); ret == gonvml.SUCCESS {
		out.ComputeInstanceID = int(info.Id)
	}
	out.UUID = migUUID(dev, out.GPUInstanceID)
	return out, nil
}

// fullComputeProfile returns the compute-instance profile that spans the
// whole GPU instance, so that the container gets every SM of its partition.
func fullComputeProfile(gi gonvml.GpuInstance, slices int) (gonvml.ComputeInstanceProfileInfo, error) {
	for id := range gonvml.COMPUTE_INSTANCE_PROFILE_COUNT {
		info, ret := gi.GetComputeInstanceProfileInfo(id, gonvml.COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED)
		if ret == gonvml.SUCCESS && int(info.SliceCount) == slices {
			return info, nil
		}
	}
	return gonvml.ComputeInstanceProfileInfo{}, fmt.Errorf("no compute-instance profile of %d slices", slices)
}

// migUUID finds the UUID of the MIG device of a GPU instance; empty when NVML
// cannot enumerate MIG devices.
func migUUID(dev gonvml.Device, gpuInstanceID int) string {
	n, ret := dev.GetMaxMigDeviceCount()
	if ret != gonvml.SUCCESS {
		return ""
	}
	for i := range n {
		mig, ret := dev.GetMigDeviceHandleByIndex(i)
		if ret != gonvml.SUCCESS {
			continue
		}
		if id, ret := mig.GetGpuInstanceId(); ret == gonvml.SUCCESS && id == gpuInstanceID {
			uuid, _ := mig.GetUUID()
			return uuid
		}
	}
	return ""
}

func (l *library) DestroyMIGDevice(ctx context.Context, gpu, gpuInstanceID int) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	dev, err := l.device(gpu)
	if err != nil {
		return err
	}
	gi, ret := dev.GetGpuInstanceById(gpuInstanceID)
	switch ret {
	case gonvml.SUCCESS:
	case gonvml.ERROR_NOT_FOUND, gonvml.ERROR_INVALID_ARGUMENT:
		return nil // already gone
	default:
		return check(ret, "get GPU instance %d on GPU %d", gpuInstanceID, gpu)
	}
	cis, err := computeInstances(gi)
	if err != nil {
		return fmt.Errorf("GPU instance %d on GPU %d: %w", gpuInstanceID, gpu, err)
	}
	for _, ci := range cis {
		if err := check(ci.Destroy(), "destroy compute instance in GPU instance %d on GPU %d", gpuInstanceID, gpu); err != nil {
			return err
		}
	}
	return check(gi.Destroy(), "destroy GPU instance %d on GPU %d", gpuInstanceID, gpu)
}

func computeInstances(gi gonvml.GpuInstance) ([]gonvml.ComputeInstance, error) {
	var out []gonvml.ComputeInstance
	for id := range gonvml.COMPUTE_INSTANCE_PROFILE_COUNT {
		info, ret := gi.GetComputeInstanceProfileInfo(id, gonvml.COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED)
		if ret != gonvml.SUCCESS {
			continue
		}
		cis, ret := gi.GetComputeInstances(&info)
		if err := check(ret, "list compute instances of profile %d", id); err != nil {
			return nil, err
		}
		out = append(out, cis...)
	}
	return out, nil
}

func (l *library) MIGDevices(ctx context.Context, gpu int) ([]MIGDevice, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	dev, err := l.device(gpu)
	if err != nil {
		return nil, err
	}
	var out []MIGDevice
	for id := range gonvml.GPU_INSTANCE_PROFILE_COUNT {
		info, ret := dev.GetGpuInstanceProfileInfo(id)
		if ret != gonvml.SUCCESS {
			continue
		}
		gis, ret := dev.GetGpuInstances(&info)
		if err := check(ret, "list GPU instances of profile %d on GPU %d", id, gpu); err != nil {
			return nil, err
		}
		for _, gi := range gis {
			giInfo, ret := gi.GetInfo()
			if err := check(ret, "get GPU instance info on GPU %d", gpu); err != nil {
				return nil, err
			}
			m := MIGDevice{
				GPUIndex:      gpu,
				ProfileID:     id,
				Placement:     inventory.Placement{Start: int(giInfo.Placement.Start), Size: int(giInfo.Placement.Size)},
				GPUInstanceID: int(giInfo.Id),
				UUID:          migUUID(dev, int(giInfo.Id)),
			}
			cis, err := computeInstances(gi)
			if err != nil {
				return nil, err
			}
			if len(cis) > 0 {
				if ciInfo, ret := cis[0].GetInfo(); ret == gonvml.SUCCESS {
					m.ComputeInstanceID = int(ciInfo.Id)
				}
			}
			out = append(out, m)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GPUInstanceID < out[j].GPUInstanceID })
	return out, nil
}
