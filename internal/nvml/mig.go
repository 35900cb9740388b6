package nvml

import (
	"context"
	"errors"
	"fmt"
	"sort"

	gonvml "github.com/NVIDIA/go-nvml/pkg/nvml"
	"k8s.io/klog/v2"

	"github.com/tessera-gpu/tessera/pkg/inventory"
)

func (l *library) device(gpu int) (gonvml.Device, error) {
	dev, ret := l.nvml.DeviceGetHandleByIndex(gpu)
	return dev, check(ret, "get GPU %d", gpu)
}

func (l *library) MIGMode(ctx context.Context, gpu int) (MIGMode, error) {
	dev, err := l.device(gpu)
	if err != nil {
		return MIGMode{}, err
	}
	current, pending, ret := dev.GetMigMode()
	switch ret {
	case gonvml.SUCCESS:
		return MIGMode{Enabled: current == gonvml.DEVICE_MIG_ENABLE, PendingEnabled: pending == gonvml.DEVICE_MIG_ENABLE}, nil
	case gonvml.ERROR_NOT_SUPPORTED:
		return MIGMode{}, nil // "If device doesn't support MIG mode"
	}
	return MIGMode{}, check(ret, "get MIG mode of GPU %d", gpu)
}

// SetMIGMode changes the mode only where it differs. nvml.h
// (nvmlDeviceSetMigMode) reports a failed activation in activationStatus,
// not in the call's result: IN_USE "if device unbind fails because the
// device isn't idle" (the caller may retry once the GPU is idle), and
// RESET_REQUIRED where only a reset (a VM reboot in pass-through) activates
// it. Any change that did not take effect at once is undone as far as NVML
// allows (the previous mode made the pending one again), so that no later
// reset switches the GPU behind Tessera's back; a change that needs a reset
// is never tried again on that GPU (kubernetes-sigs/dra-driver-nvidia-gpu#883
// broke cloud VMs by repeating it).
func (l *library) SetMIGMode(ctx context.Context, gpu int, enabled bool) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	dev, err := l.device(gpu)
	if err != nil {
		return err
	}
	uuid, ret := dev.GetUUID()
	if err := check(ret, "get UUID of GPU %d", gpu); err != nil {
		return err
	}
	if why, ok := l.frozen[uuid]; ok {
		return why
	}
	want := migModeValue(enabled)
	current, pending, ret := dev.GetMigMode()
	if err := check(ret, "get MIG mode of GPU %d", gpu); err != nil {
		return err
	}
	if current != pending {
		// Someone (an admin, or a run of the plugin before a restart)
		// left a change for the next reset: not Tessera's to undo.
		return l.freeze(ctx, gpu, uuid, fmt.Errorf("GPU %d has MIG mode %s pending until its next reset: %w", gpu, migModeName(pending), ErrResetRequired))
	}
	if current == want {
		return nil
	}
	ret, activation := dev.SetMigMode(want)
	if err := check(ret, "set MIG mode %s on GPU %d", migModeName(want), gpu); err != nil {
		return err
	}
	if activation == gonvml.SUCCESS {
		now, pending, ret := dev.GetMigMode()
		if err := check(ret, "get MIG mode of GPU %d", gpu); err != nil {
			return err
		}
		if now == want && pending == want {
			return nil
		}
		// Accepted but not in effect: it waits for a reset.
		activation = gonvml.ERROR_RESET_REQUIRED
	}
	restoreErr := restoreMIGMode(dev, gpu, current)
	if activation == gonvml.ERROR_IN_USE {
		return errors.Join(&Error{Op: fmt.Sprintf("activate MIG mode %s on GPU %d", migModeName(want), gpu), Return: activation}, restoreErr)
	}
	err = fmt.Errorf("activate MIG mode %s on GPU %d: %w (%s)", migModeName(want), gpu, ErrResetRequired, gonvml.ErrorString(activation))
	return errors.Join(l.freeze(ctx, gpu, uuid, err), restoreErr)
}

// restoreMIGMode makes the GPU's current mode its pending one again after a
// change that did not take effect.
func restoreMIGMode(dev gonvml.Device, gpu, previous int) error {
	// The activation status is moot: the mode is the current one.
	ret, _ := dev.SetMigMode(previous)
	if err := check(ret, "put MIG mode %s back on GPU %d", migModeName(previous), gpu); err != nil {
		return err
	}
	_, pending, ret := dev.GetMigMode()
	if err := check(ret, "get MIG mode of GPU %d", gpu); err != nil {
		return err
	}
	if pending != previous {
		return fmt.Errorf("GPU %d keeps MIG mode %s pending: its next reset will switch it", gpu, migModeName(pending))
	}
	return nil
}

// freeze records that the GPU's MIG mode is never to be changed again, and
// logs why once. Must be called with l.mu held.
func (l *library) freeze(ctx context.Context, gpu int, uuid string, why error) error {
	l.frozen[uuid] = why
	klog.FromContext(ctx).Error(why, "Never changing this GPU's MIG mode again; it offers what its current mode allows", "gpu", gpu, "uuid", uuid)
	return why
}

func (l *library) isFrozen(uuid string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, ok := l.frozen[uuid]
	return ok
}

func migModeValue(enabled bool) int {
	if enabled {
		return gonvml.DEVICE_MIG_ENABLE
	}
	return gonvml.DEVICE_MIG_DISABLE
}

func migModeName(mode int) string {
	if mode == gonvml.DEVICE_MIG_ENABLE {
		return "on"
	}
	return "off"
}

// migOff reports whether the GPU's MIG mode is off (or unsupported): nvml.h
// then answers NOT_SUPPORTED for every instance query ("If device doesn't
// have MIG mode enabled"), and no instance can exist.
func migOff(dev gonvml.Device, gpu int) (bool, error) {
	current, _, ret := dev.GetMigMode()
	switch ret {
	case gonvml.SUCCESS:
		return current != gonvml.DEVICE_MIG_ENABLE, nil
	case gonvml.ERROR_NOT_SUPPORTED:
		return true, nil
	}
	return false, check(ret, "get MIG mode of GPU %d", gpu)
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
	// rollback destroys the new GPU instance after a later step failed,
	// returning both errors: an instance left behind must be known.
	rollback := func(err error) error {
		if dret := gi.Destroy(); dret != gonvml.SUCCESS {
			return fmt.Errorf("%w; rolling back: %w", err, check(dret, "destroy GPU instance of profile %d at %d+%d on GPU %d", profileID, placement.Start, placement.Size, gpu))
		}
		return err
	}
	giInfo, ret := gi.GetInfo()
	if err := check(ret, "get GPU instance info on GPU %d", gpu); err != nil {
		return out, rollback(err)
	}
	out.GPUInstanceID = int(giInfo.Id)
	ciInfo, err := fullComputeProfile(gi, int(info.SliceCount))
	if err != nil {
		return out, rollback(fmt.Errorf("GPU instance %d on GPU %d: %w", out.GPUInstanceID, gpu, err))
	}
	ci, ret := gi.CreateComputeInstance(&ciInfo)
	if err := check(ret, "create compute instance in GPU instance %d on GPU %d", out.GPUInstanceID, gpu); err != nil {
		return out, rollback(err)
	}
	// rollbackCI destroys the compute instance first: NVML refuses to
	// destroy a GPU instance that holds one.
	rollbackCI := func(err error) error {
		if dret := ci.Destroy(); dret != gonvml.SUCCESS {
			return fmt.Errorf("%w; rolling back: %w", err, check(dret, "destroy compute instance in GPU instance %d on GPU %d", out.GPUInstanceID, gpu))
		}
		return rollback(err)
	}
	ciInfoGot, ret := ci.GetInfo()
	if err := check(ret, "get compute instance info in GPU instance %d on GPU %d", out.GPUInstanceID, gpu); err != nil {
		return out, rollbackCI(err)
	}
	out.ComputeInstanceID = int(ciInfoGot.Id)
	if out.UUID, err = migUUID(dev, out.GPUInstanceID); err != nil {
		return out, rollbackCI(fmt.Errorf("GPU instance %d on GPU %d: %w", out.GPUInstanceID, gpu, err))
	}
	return out, nil
}

// fullComputeProfile returns the compute-instance profile that spans the
// whole GPU instance, so that the container gets every SM of its partition.
func fullComputeProfile(gi gonvml.GpuInstance, slices int) (gonvml.ComputeInstanceProfileInfo, error) {
	for id := range gonvml.COMPUTE_INSTANCE_PROFILE_COUNT {
		info, ok, err := computeProfile(gi, id)
		if err != nil {
			return info, err
		}
		if ok && int(info.SliceCount) == slices {
			return info, nil
		}
	}
	return gonvml.ComputeInstanceProfileInfo{}, fmt.Errorf("no compute-instance profile of %d slices", slices)
}

// computeProfile returns a compute-instance profile of the GPU instance, and
// whether the GPU instance offers it ("NVML_ERROR_NOT_SUPPORTED If ... profile
// isn't supported", INVALID_ARGUMENT for a profile ID NVML does not know).
func computeProfile(gi gonvml.GpuInstance, id int) (gonvml.ComputeInstanceProfileInfo, bool, error) {
	info, ret := gi.GetComputeInstanceProfileInfo(id, gonvml.COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED)
	switch ret {
	case gonvml.SUCCESS:
		return info, true, nil
	case gonvml.ERROR_NOT_SUPPORTED, gonvml.ERROR_INVALID_ARGUMENT:
		return info, false, nil
	}
	return info, false, check(ret, "get compute-instance profile %d", id)
}

// migUUID finds the UUID of the MIG device of a GPU instance; empty when NVML
// cannot enumerate MIG devices (the CDI spec then names the device by its
// parent's UUID and instance IDs).
func migUUID(dev gonvml.Device, gpuInstanceID int) (string, error) {
	n, ret := dev.GetMaxMigDeviceCount()
	switch ret {
	case gonvml.SUCCESS:
	case gonvml.ERROR_NOT_SUPPORTED:
		return "", nil
	default:
		return "", check(ret, "count MIG devices")
	}
	for i := range n {
		mig, ret := dev.GetMigDeviceHandleByIndex(i)
		switch ret {
		case gonvml.SUCCESS:
		case gonvml.ERROR_NOT_FOUND, gonvml.ERROR_INVALID_ARGUMENT:
			continue // no MIG device in this slot
		default:
			return "", check(ret, "get MIG device %d", i)
		}
		id, ret := mig.GetGpuInstanceId()
		if err := check(ret, "get GPU instance of MIG device %d", i); err != nil {
			return "", err
		}
		if id != gpuInstanceID {
			continue
		}
		uuid, ret := mig.GetUUID()
		return uuid, check(ret, "get UUID of MIG device %d", i)
	}
	return "", nil
}

func (l *library) DestroyMIGDevice(ctx context.Context, gpu, gpuInstanceID int) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	dev, err := l.device(gpu)
	if err != nil {
		return err
	}
	if off, err := migOff(dev, gpu); err != nil || off {
		return err // with MIG off (e.g. after a reset) it is gone
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
		info, ok, err := computeProfile(gi, id)
		if err != nil {
			return nil, err
		}
		if !ok || info.InstanceCount == 0 {
			// go-nvml refuses a profile with no instances
			// (INVALID_ARGUMENT), as for GPU instances.
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
	if off, err := migOff(dev, gpu); err != nil || off {
		return nil, err
	}
	var out []MIGDevice
	for id := range gonvml.GPU_INSTANCE_PROFILE_COUNT {
		info, ret := dev.GetGpuInstanceProfileInfo(id)
		if ret != gonvml.SUCCESS || info.InstanceCount == 0 {
			// go-nvml refuses to list a profile with no instances
			// (INVALID_ARGUMENT, without asking NVML).
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
			uuid, err := migUUID(dev, int(giInfo.Id))
			if err != nil {
				return nil, fmt.Errorf("GPU instance %d on GPU %d: %w", giInfo.Id, gpu, err)
			}
			m := MIGDevice{
				GPUIndex:      gpu,
				ProfileID:     id,
				Placement:     inventory.Placement{Start: int(giInfo.Placement.Start), Size: int(giInfo.Placement.Size)},
				GPUInstanceID: int(giInfo.Id),
				UUID:          uuid,
			}
			cis, err := computeInstances(gi)
			if err != nil {
				return nil, err
			}
			if len(cis) > 0 {
				ciInfo, ret := cis[0].GetInfo()
				if err := check(ret, "get compute instance info in GPU instance %d on GPU %d", giInfo.Id, gpu); err != nil {
					return nil, err
				}
				m.ComputeInstanceID = int(ciInfo.Id)
			}
			out = append(out, m)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GPUInstanceID < out[j].GPUInstanceID })
	return out, nil
}
