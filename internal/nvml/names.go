package nvml

import (
	"context"
	"strings"

	gonvml "github.com/NVIDIA/go-nvml/pkg/nvml"
)

// ProfileNamer is implemented by the libraries that can say how NVML itself
// names a GPU's MIG profiles, for a report that compares NVML with Tessera's
// table (migprofile), which discovery publishes.
type ProfileNamer interface {
	// NVMLProfileNames returns NVML's name of each MIG profile the GPU
	// offers, by profile ID, from the versioned profile-info call; nil
	// while MIG mode is off, where nvml.h has that call answer
	// NOT_SUPPORTED. It changes nothing.
	NVMLProfileNames(ctx context.Context, gpu int) (map[int]string, error)
}

var _ ProfileNamer = (*library)(nil)

func (l *library) NVMLProfileNames(ctx context.Context, gpu int) (map[int]string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	dev, err := l.device(gpu)
	if err != nil {
		return nil, err
	}
	if off, err := migOff(dev, gpu); err != nil || off {
		return nil, err
	}
	out := map[int]string{}
	for id := range gonvml.GPU_INSTANCE_PROFILE_COUNT {
		info, ret := dev.GetGpuInstanceProfileInfo(id)
		if ret != gonvml.SUCCESS || info.InstanceCount == 0 {
			continue
		}
		v3, ret := l.profileInfoV3(dev, id)
		if ret != gonvml.SUCCESS {
			continue
		}
		out[id] = strings.TrimPrefix(cString(v3.Name[:]), "MIG ")
	}
	return out, nil
}
