package prepare

import (
	"context"
	"errors"
	"sync"

	tnvml "github.com/tessera-gpu/tessera/internal/nvml"
	"github.com/tessera-gpu/tessera/pkg/inventory"
	"github.com/tessera-gpu/tessera/pkg/partition"
)

type deviceInfo struct {
	gpu    inventory.GPU
	device partition.Device
	// counters are the capacities of the GPU's counter set.
	counters map[string]int64
}

// gpuState serialises the changes that concern one physical GPU: its MIG
// mode and instances, its MPS daemon and its time slice.
type gpuState struct {
	sync.Mutex
	gpu inventory.GPU
}

// SetInventory makes the node's current GPUs the ones claims can be
// prepared on: a GPU that appeared becomes usable, one that vanished takes
// no new claims (claims on it can still be unprepared), and a changed one
// (e.g. its MIG mode) is prepared as it is now.
func (p *Preparer) SetInventory(node inventory.Node) {
	devices := map[string]deviceInfo{}
	for _, gpu := range node.GPUs {
		g := partition.Build(gpu, partition.Options{})
		for _, d := range g.Devices {
			devices[d.Name] = deviceInfo{gpu: gpu, device: d, counters: g.Counters}
		}
	}
	p.invMu.Lock()
	defer p.invMu.Unlock()
	p.devices = devices
	for _, gpu := range node.GPUs {
		g, ok := p.gpus[gpu.Index]
		if !ok {
			p.gpus[gpu.Index] = &gpuState{gpu: gpu}
			continue
		}
		g.Lock()
		g.gpu = gpu
		g.Unlock()
	}
}

// gpu returns the state of a GPU seen since start, nil for none.
func (p *Preparer) gpu(index int) *gpuState {
	p.invMu.RLock()
	defer p.invMu.RUnlock()
	return p.gpus[index]
}

// device returns what a device of the current inventory is.
func (p *Preparer) device(name string) (deviceInfo, bool) {
	p.invMu.RLock()
	defer p.invMu.RUnlock()
	info, ok := p.devices[name]
	return info, ok
}

// gpuLost reports whether a GPU is gone: not found at start, or answering
// that it fell off the bus. What a claim had on it went with it, so that
// unprepare must not fail on it forever.
func (p *Preparer) gpuLost(ctx context.Context, index int) bool {
	if p.gpu(index) == nil {
		return true
	}
	h, ok := p.nvml.(tnvml.Health)
	return ok && errors.Is(h.CheckGPU(ctx, index), tnvml.ErrGPULost)
}
