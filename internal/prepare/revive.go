package prepare

import (
	"context"
	"fmt"
	"slices"
	"strings"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/klog/v2"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/internal/checkpoint"
	"github.com/tessera-gpu/tessera/pkg/inventory"
)

// A reboot or GPU reset takes every MIG instance (and, on Hopper, MIG mode),
// while the checkpoint still holds the claims prepared on them and the
// kubelet re-prepares them. Returning the recorded CDI IDs would hand the
// container runtime devices that no longer exist. The allocation still
// holds each partition's placement, so no other claim can have taken it: the
// instance is re-created there, recorded, and the claim's CDI spec rewritten
// with its new UUID and capability nodes; where that fails, the prepare
// fails with the reason.

// reviveMIG re-creates the claim's recorded MIG instances that no longer
// exist. c is a copy of a completed claim's entry and is updated along; it
// reports whether any instance was re-created.
func (p *Preparer) reviveMIG(ctx context.Context, c *checkpoint.Claim) (bool, error) {
	revived := false
	for i := range c.Devices {
		d := &c.Devices[i]
		if d.MIG == nil || !d.MIG.Created {
			continue
		}
		exists, err := p.migExists(ctx, d)
		if err != nil {
			return revived, fmt.Errorf("MIG device %s: %w", d.Device, err)
		}
		if exists {
			continue
		}
		klog.FromContext(ctx).Info("MIG instance of a prepared claim is gone (GPU reset or reboot); re-creating it at its placement",
			"claim", c.Namespace+"/"+c.Name, "device", d.Device, "gpu", d.GPUIndex, "placement", d.MIG.Placement)
		m, err := p.createMIG(ctx, d)
		if err != nil {
			return revived, fmt.Errorf("re-create MIG device %s after its instance was lost: %w", d.Device, err)
		}
		d.MIG.GPUInstanceID, d.MIG.ComputeInstanceID, d.MIG.UUID = m.GPUInstanceID, m.ComputeInstanceID, m.UUID
		if err := p.update(func(cp *checkpoint.Checkpoint) { cp.Claims[c.UID].Devices[i].MIG = ptrCopy(d.MIG) }); err != nil {
			return revived, err
		}
		revived = true
	}
	if !revived {
		return false, nil
	}
	spec, err := p.cdiClaim(c)
	if err != nil {
		return true, err
	}
	if _, err := p.cdi.Write(spec); err != nil {
		return true, fmt.Errorf("rewrite CDI spec with re-created MIG devices: %w", err)
	}
	return true, nil
}

// migExists reports whether the recorded instance of a MIG device exists.
func (p *Preparer) migExists(ctx context.Context, d *checkpoint.Device) (bool, error) {
	g := p.gpu(d.GPUIndex)
	if g == nil {
		return false, fmt.Errorf("GPU %d is not on this node", d.GPUIndex)
	}
	g.Lock()
	defer g.Unlock()
	existing, err := p.nvml.MIGDevices(ctx, d.GPUIndex)
	if err != nil {
		return false, fmt.Errorf("list MIG devices of GPU %d: %w", d.GPUIndex, err)
	}
	for _, m := range existing {
		if sameMIG(d.MIG, m) {
			return true, nil
		}
	}
	return false, nil
}

// checkAllocation refuses to serve a prepared claim again for an
// allocation other than the one it was prepared for (a claim deallocated
// and allocated anew while the plugin kept its old entry).
func checkAllocation(claim *resourceapi.ResourceClaim, c *checkpoint.Claim) error {
	var allocated, prepared []string
	if claim.Status.Allocation != nil {
		for _, r := range claim.Status.Allocation.Devices.Results {
			if r.Driver == gpuapi.DriverName {
				allocated = append(allocated, r.Request+"="+r.Pool+"/"+r.Device)
			}
		}
	}
	for _, d := range c.Devices {
		prepared = append(prepared, d.Request+"="+d.Pool+"/"+d.Device)
	}
	slices.Sort(allocated)
	slices.Sort(prepared)
	if !slices.Equal(allocated, prepared) {
		return fmt.Errorf("claim was prepared for %s but is allocated %s: unprepare it first", strings.Join(prepared, ","), strings.Join(allocated, ","))
	}
	return nil
}

// goneGPU is the GPU index recorded for a device whose GPU discovery no
// longer finds: no GPU has it, so nothing is done on another GPU in its name.
const goneGPU = -1

// checkRecordedGPUs brings the GPU index recorded for each claim's device
// in line with discovery, by GPU UUID: after a reboot in which another GPU
// failed to probe, NVML indexes shift while the devices' names (the minor
// number) and UUIDs stay. A device whose GPU is not found while another GPU
// has its index is recorded as gone, so that unprepare forgets what went
// with it and a re-prepare fails instead of acting on that other GPU. Called at start, with
// the state locked, before reconciling.
func (p *Preparer) checkRecordedGPUs(ctx context.Context, node inventory.Node) error {
	index := map[string]int{}
	taken := map[int]bool{}
	for _, gpu := range node.GPUs {
		index[gpu.UUID] = gpu.Index
		taken[gpu.Index] = true
	}
	logger := klog.FromContext(ctx)
	type move struct {
		uid    string
		device int
		to     int
	}
	var moves []move
	p.mu.Lock()
	for _, uid := range p.cp.UIDs() {
		for i, d := range p.cp.Claims[uid].Devices {
			to, found := index[d.GPUUUID]
			switch {
			case found:
			case taken[d.GPUIndex]:
				// Another GPU has its index now.
				to = goneGPU
			default:
				// Lost (fallen off the bus) with its index free: it
				// may answer again under it.
				to = d.GPUIndex
			}
			if to != d.GPUIndex {
				moves = append(moves, move{uid, i, to})
				logger.Info("GPU of a recorded claim has another NVML index since the claim was prepared", "claimUID", uid,
					"device", d.Device, "gpuUUID", d.GPUUUID, "recorded", d.GPUIndex, "now", to)
			}
		}
	}
	p.mu.Unlock()
	if len(moves) == 0 {
		return nil
	}
	return p.update(func(cp *checkpoint.Checkpoint) {
		for _, m := range moves {
			cp.Claims[m.uid].Devices[m.device].GPUIndex = m.to
		}
	})
}
