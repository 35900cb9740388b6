package prepare

import (
	"fmt"
	"strings"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/utils/ptr"

	configapi "github.com/tessera-gpu/tessera/api/config/v1alpha1"
	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/internal/checkpoint"
	"github.com/tessera-gpu/tessera/pkg/partition"
)

// plan turns the claim's allocation into the devices to make, with their
// resolved configuration. It touches nothing.
func (p *Preparer) plan(claim *resourceapi.ResourceClaim) ([]checkpoint.Device, error) {
	alloc := claim.Status.Allocation
	if alloc == nil {
		return nil, fmt.Errorf("claim is not allocated")
	}
	var (
		results []resourceapi.DeviceRequestAllocationResult
		infos   []deviceInfo
		kinds   []partition.Kind
	)
	for _, r := range alloc.Devices.Results {
		if r.Driver != gpuapi.DriverName {
			continue
		}
		if p.nodeName != "" && r.Pool != p.nodeName {
			return nil, fmt.Errorf("device %s of request %s is in pool %s, not in this node's pool %s", r.Device, r.Request, r.Pool, p.nodeName)
		}
		info, ok := p.device(r.Device)
		if !ok {
			return nil, fmt.Errorf("device %s of request %s is not a device of this node", r.Device, r.Request)
		}
		results = append(results, r)
		infos = append(infos, info)
		kinds = append(kinds, info.device.Kind)
	}
	configs, err := resolveConfig(alloc, results, kinds)
	if err != nil {
		return nil, err
	}
	devices := make([]checkpoint.Device, len(results))
	mpsGPUs := map[string]bool{}
	for i, r := range results {
		info := infos[i]
		d := checkpoint.Device{
			Request: r.Request, Pool: r.Pool, Device: r.Device, Kind: string(info.device.Kind),
			GPUIndex: info.gpu.Index, GPUUUID: info.gpu.UUID, GPUMinor: info.gpu.Minor,
		}
		var sharing *configapi.Sharing
		if configs[i] != nil {
			sharing = configs[i].Sharing
		}
		if ptr.Deref(r.AdminAccess, false) {
			if err := adminAccess(&d, r, info.device.Kind, sharing); err != nil {
				return nil, err
			}
			devices[i] = d
			continue
		}
		switch info.device.Kind {
		case partition.KindMIG:
			d.MIG = &checkpoint.MIG{ProfileID: info.device.Profile.ID, Profile: info.device.Profile.Name, Placement: info.device.Placement}
			// A MIG partition's containers time-slice at the default
			// interval; MIGConfig allows nothing else to set up.
			sharing = nil
		case partition.KindShared:
			d.Share = share(r)
			if sharing == nil {
				// Shares are enforced unless an admin chose otherwise.
				sharing = &configapi.Sharing{Strategy: configapi.MPSStrategy}
			}
		}
		if sharing != nil {
			d.Sharing = &checkpoint.Sharing{Strategy: string(sharing.Strategy)}
			switch sharing.Strategy {
			case configapi.TimeSlicingStrategy:
				d.Sharing.Interval = string(sharing.TimeSlicing.IntervalOrDefault())
			case configapi.MPSStrategy:
				mpsGPUs[d.GPUUUID] = true
				if m := sharing.MPS; m != nil {
					if m.DefaultActiveThreadPercentage != nil {
						d.Sharing.ActiveThreadPercentage = int64(*m.DefaultActiveThreadPercentage)
					}
					if m.DefaultPinnedDeviceMemoryLimit != nil {
						d.Sharing.PinnedMemoryLimitBytes = m.DefaultPinnedDeviceMemoryLimit.Value()
					}
				}
				// The share's own capacity is its limit.
				if d.Share != nil && d.Share.Compute > 0 {
					d.Sharing.ActiveThreadPercentage = d.Share.Compute
				}
				if d.Share != nil && d.Share.MemoryBytes > 0 {
					d.Sharing.PinnedMemoryLimitBytes = d.Share.MemoryBytes
				}
			}
		}
		devices[i] = d
	}
	// A claim's containers talk to one control daemon, the claim's own,
	// and a daemon's defaults limit one GPU.
	if len(mpsGPUs) > 1 {
		return nil, fmt.Errorf("MPS-shared devices of one claim must be on one GPU; this claim's are on %d GPUs", len(mpsGPUs))
	}
	return devices, nil
}

// adminAccess plans a device allocated with DRA admin access. The scheduler
// allocates such a device whatever else holds it and counts it for no one,
// so whatever the plugin made for it would be unseen by the scheduler: a
// MIG instance on memory slices it then allocates to another claim, an MPS
// daemon taking a share of compute no share accounts for. Only a whole GPU
// is prepared, as it is (its device nodes for monitoring or debugging),
// with no sharing set up and no MIG mode changed; a MIG partition or a
// share is refused.
func adminAccess(d *checkpoint.Device, r resourceapi.DeviceRequestAllocationResult, kind partition.Kind, sharing *configapi.Sharing) error {
	switch kind {
	case partition.KindGPU:
		if sharing != nil {
			return fmt.Errorf("device %s of request %s is allocated with admin access, which sets up no sharing; its config asks for %s sharing", r.Device, r.Request, sharing.Strategy)
		}
		d.AdminAccess = true
		return nil
	default:
		return fmt.Errorf("device %s of request %s is allocated with admin access, which the plugin prepares only on a whole GPU (%s): the scheduler counts no admin-access allocation, so a %s device made for it would overlap what it allocates to other claims",
			r.Device, r.Request, gpuapi.WholeDeviceName(d.GPUMinor), kind)
	}
}

// share reads a share's consumed capacity from its allocation result.
func share(r resourceapi.DeviceRequestAllocationResult) *checkpoint.Share {
	s := &checkpoint.Share{}
	if r.ShareID != nil {
		s.ShareID = string(*r.ShareID)
	}
	for name, q := range r.ConsumedCapacity {
		switch strings.TrimPrefix(string(name), gpuapi.DriverName+"/") {
		case gpuapi.CapMemory:
			s.MemoryBytes = q.Value()
		case gpuapi.CapCompute:
			s.Compute = q.Value()
		}
	}
	return s
}

// result is what the kubelet gets for a prepared claim.
func result(c *checkpoint.Claim) kubeletplugin.PrepareResult {
	res := kubeletplugin.PrepareResult{Devices: []kubeletplugin.Device{}}
	for _, d := range c.Devices {
		dev := kubeletplugin.Device{
			Requests:     []string{d.Request},
			PoolName:     d.Pool,
			DeviceName:   d.Device,
			CDIDeviceIDs: d.CDIDeviceIDs,
		}
		if d.Share != nil && d.Share.ShareID != "" {
			id := types.UID(d.Share.ShareID)
			dev.ShareID = &id
		}
		res.Devices = append(res.Devices, dev)
	}
	return res
}

// kindOf labels a claim for metrics by the kind of its devices.
func kindOf(c *checkpoint.Claim) string {
	kind := "none"
	for _, d := range c.Devices {
		switch {
		case kind == "none":
			kind = d.Kind
		case kind != d.Kind:
			return "mixed"
		}
	}
	return kind
}

func timeSlice(interval string) configapi.TimeSliceInterval {
	if interval == "" {
		return configapi.DefaultTimeSlice
	}
	return configapi.TimeSliceInterval(interval)
}
