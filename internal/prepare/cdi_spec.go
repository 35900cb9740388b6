package prepare

import (
	"fmt"
	"strings"

	configapi "github.com/tessera-gpu/tessera/api/config/v1alpha1"
	tcdi "github.com/tessera-gpu/tessera/internal/cdi"
	"github.com/tessera-gpu/tessera/internal/checkpoint"
	"github.com/tessera-gpu/tessera/internal/sharing"
)

// mpsPipeDir is where a container finds its GPU's MPS daemon.
const mpsPipeDir = "/tmp/nvidia-mps"

// cdiClaim builds what the claim's containers get: per device its device
// nodes (and, on the first MPS device, the claim's daemon's pipe and
// /dev/shm mounts), per claim the visibility and MPS limit
// environment. Environment is per claim because several devices of one
// claim would otherwise overwrite each other's NVIDIA_VISIBLE_DEVICES.
func (p *Preparer) cdiClaim(c *checkpoint.Claim) (tcdi.Claim, error) {
	out := tcdi.Claim{UID: c.UID}
	var visible []string
	seen := map[string]int{} // visible UUID -> CUDA ordinal
	var mpsMemory = map[int]int64{}
	var mpsThreads int64
	mps := false
	driver, err := p.deviceNodes.Driver()
	if err != nil {
		return out, err
	}
	control, err := p.deviceNodes.Control(driver)
	if err != nil {
		return out, err
	}
	for _, d := range c.Devices {
		uuid := d.GPUUUID
		nodes := []tcdi.DeviceNode{driver.GPU(d.GPUMinor)}
		if d.MIG != nil {
			uuid = d.MIG.UUID
			if uuid == "" {
				// Drivers that cannot enumerate MIG devices still accept
				// the older <GPU UUID>/<GI>/<CI> form.
				uuid = fmt.Sprintf("MIG-%s/%d/%d", d.GPUUUID, d.MIG.GPUInstanceID, d.MIG.ComputeInstanceID)
			}
			caps, err := p.deviceNodes.MIGCapabilities(driver, d.GPUMinor, d.MIG.GPUInstanceID, d.MIG.ComputeInstanceID)
			if err != nil {
				return out, fmt.Errorf("MIG device %s: %w", d.Device, err)
			}
			nodes = append(nodes, caps...)
		}
		nodes = append(nodes, control...)
		ordinal, ok := seen[uuid]
		if !ok {
			ordinal = len(visible)
			seen[uuid] = ordinal
			visible = append(visible, uuid)
		}
		dev := tcdi.Device{Name: d.Device, DeviceNodes: nodes}
		if d.Sharing != nil && d.Sharing.Strategy == string(configapi.MPSStrategy) {
			// The claim's own daemon: its pipes and its /dev/shm, which
			// no other claim's containers get.
			if !mps {
				dirs := sharing.DaemonDirs(p.mpsRoot(), c.UID)
				dev.Mounts = []tcdi.Mount{
					{HostPath: dirs.Pipe, ContainerPath: mpsPipeDir},
					{HostPath: dirs.Shm, ContainerPath: "/dev/shm"},
				}
			}
			mps = true
			mpsMemory[ordinal] += d.Sharing.PinnedMemoryLimitBytes
			mpsThreads += d.Sharing.ActiveThreadPercentage
		}
		out.Devices = append(out.Devices, dev)
	}
	if len(visible) > 0 {
		list := strings.Join(visible, ",")
		out.Env = append(out.Env, "NVIDIA_VISIBLE_DEVICES="+list, "CUDA_VISIBLE_DEVICES="+list)
	}
	if mps {
		out.Env = append(out.Env, "CUDA_MPS_PIPE_DIRECTORY="+mpsPipeDir)
		var limits []string
		for ordinal := range visible {
			if b := mpsMemory[ordinal]; b > 0 {
				limits = append(limits, fmt.Sprintf("%d=%dM", ordinal, b>>20))
			}
		}
		if len(limits) > 0 {
			out.Env = append(out.Env, "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT="+strings.Join(limits, ","))
		}
		if mpsThreads > 0 {
			out.Env = append(out.Env, fmt.Sprintf("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=%d", min(mpsThreads, 100)))
		}
	}
	return out, nil
}
