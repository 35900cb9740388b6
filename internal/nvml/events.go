package nvml

import (
	"context"
	"errors"
	"fmt"

	gonvml "github.com/NVIDIA/go-nvml/pkg/nvml"
	"k8s.io/klog/v2"
)

// XIDEvent is a critical XID error NVML reported for a GPU.
type XIDEvent struct {
	GPUIndex int
	XID      uint64
	// GPUInstanceID and ComputeInstanceID name the MIG instance the error
	// is confined to; -1 when it concerns the whole GPU.
	GPUInstanceID     int
	ComputeInstanceID int
}

// ErrGPULost is returned by CheckGPU for a GPU that fell off the bus.
var ErrGPULost = errors.New("GPU is lost")

// Health is implemented by Library implementations that report GPU health.
// It is a separate interface so that Library stays small for its fakes.
type Health interface {
	// WatchXIDs sends critical XID errors to events until ctx ends.
	WatchXIDs(ctx context.Context, events chan<- XIDEvent) error
	// CheckGPU returns nil when the GPU answers, ErrGPULost when it fell
	// off the bus, another error when NVML cannot tell.
	CheckGPU(ctx context.Context, index int) error
}

var _ Health = (*library)(nil)

// eventWaitMs bounds each wait for an event, and so how long WatchXIDs
// takes to notice that ctx ended.
const eventWaitMs = 500

// noInstance is NVML's instance ID for "not a MIG instance".
const noInstance = 0xFFFFFFFF

func (l *library) WatchXIDs(ctx context.Context, events chan<- XIDEvent) error {
	// go-nvml's mock servers have no event sets unless asked.
	if m, ok := l.nvml.(interface{ EnableEvents() }); ok {
		m.EnableEvents()
	}
	set, ret := l.nvml.EventSetCreate()
	if err := check(ret, "create NVML event set"); err != nil {
		return err
	}
	defer func() { _ = set.Free() }()
	count, ret := l.nvml.DeviceGetCount()
	if err := check(ret, "count GPUs"); err != nil {
		return err
	}
	logger := klog.FromContext(ctx)
	index := map[string]int{}
	for i := range count {
		// A GPU that cannot be reached (fallen off the bus) is left out:
		// the periodic health check taints it, and the others are watched.
		dev, ret := l.nvml.DeviceGetHandleByIndex(i)
		if err := check(ret, "get GPU %d", i); err != nil {
			logger.Error(err, "Not watching XID events of a GPU", "gpu", i)
			continue
		}
		uuid, ret := dev.GetUUID()
		if err := check(ret, "get UUID of GPU %d", i); err != nil {
			logger.Error(err, "Not watching XID events of a GPU", "gpu", i)
			continue
		}
		index[uuid] = i
		supported, ret := dev.GetSupportedEventTypes()
		if err := check(ret, "get supported events of GPU %d", i); err != nil {
			return err
		}
		if supported&gonvml.EventTypeXidCriticalError == 0 {
			continue
		}
		if err := check(dev.RegisterEvents(gonvml.EventTypeXidCriticalError, set), "register XID events of GPU %d", i); err != nil {
			return err
		}
	}
	for ctx.Err() == nil {
		data, ret := set.Wait(eventWaitMs)
		switch ret {
		case gonvml.SUCCESS:
		case gonvml.ERROR_TIMEOUT:
			continue
		default:
			return check(ret, "wait for NVML events")
		}
		if data.EventType != gonvml.EventTypeXidCriticalError {
			continue
		}
		uuid, ret := data.Device.GetUUID()
		i, ok := index[uuid]
		if ret != gonvml.SUCCESS || !ok {
			// Most likely the GPU fell off the bus, which the health
			// check sees; the other GPUs' events still matter.
			logger.Error(check(ret, "get UUID"), "XID on a GPU that cannot be identified", "xid", data.EventData)
			continue
		}
		ev := XIDEvent{GPUIndex: i, XID: data.EventData, GPUInstanceID: -1, ComputeInstanceID: -1}
		if data.GpuInstanceId != noInstance {
			ev.GPUInstanceID = int(data.GpuInstanceId)
		}
		if data.ComputeInstanceId != noInstance {
			ev.ComputeInstanceID = int(data.ComputeInstanceId)
		}
		select {
		case events <- ev:
		case <-ctx.Done():
		}
	}
	return nil
}

func (l *library) CheckGPU(ctx context.Context, index int) error {
	dev, ret := l.nvml.DeviceGetHandleByIndex(index)
	if ret == gonvml.SUCCESS {
		_, ret = dev.GetUUID()
	}
	switch ret {
	case gonvml.SUCCESS:
		return nil
	case gonvml.ERROR_GPU_IS_LOST:
		return fmt.Errorf("GPU %d: %w", index, ErrGPULost)
	}
	return check(ret, "check GPU %d", index)
}
