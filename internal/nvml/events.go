package nvml

import (
	"context"
	"errors"
	"fmt"
	"time"

	gonvml "github.com/NVIDIA/go-nvml/pkg/nvml"
	"golang.org/x/sync/errgroup"
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
	// WatchXIDs sends critical XID errors to events until ctx ends. Each
	// GPU is watched on its own: one GPU's failure never ends the watch of
	// another, and a GPU's watch that NVML ended is re-armed.
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

// watchOptions configure how a GPU's XID watch is re-armed after NVML ended
// it: first after backoff, each further failure in a row doubling the wait
// up to maxBackoff, so that a GPU that stays lost costs a call a minute.
type watchOptions struct {
	backoff, maxBackoff time.Duration
}

func defaultWatchOptions() watchOptions {
	return watchOptions{backoff: time.Second, maxBackoff: time.Minute}
}

// errNoXIDEvents is why a GPU that cannot report XID events is not watched.
var errNoXIDEvents = errors.New("GPU does not report critical XID events")

func (l *library) WatchXIDs(ctx context.Context, events chan<- XIDEvent) error {
	// go-nvml's mock servers have no event sets unless asked.
	if m, ok := l.nvml.(interface{ EnableEvents() }); ok {
		m.EnableEvents()
	}
	count, ret := l.nvml.DeviceGetCount()
	if err := check(ret, "count GPUs"); err != nil {
		return err
	}
	g, ctx := errgroup.WithContext(ctx)
	for i := range count {
		g.Go(func() error {
			l.watchGPU(ctx, i, events)
			return nil
		})
	}
	return g.Wait()
}

// watchGPU watches one GPU's XID events until ctx ends, on an event set of
// its own: nvmlEventSetWait returns NVML_ERROR_GPU_IS_LOST "if a GPU has
// fallen off the bus or is otherwise inaccessible" and NVML_ERROR_UNKNOWN
// "on any unexpected error" (nvml.h), so a set shared by all GPUs would end
// every GPU's watch with one GPU's failure. After any failure, of
// registration or of a wait, the set is freed and the watch re-armed.
func (l *library) watchGPU(ctx context.Context, index int, events chan<- XIDEvent) {
	logger := klog.FromContext(ctx).WithValues("gpu", index)
	delay := l.watch.backoff
	for {
		err := l.watchGPUOnce(ctx, index, events, func() { delay = l.watch.backoff })
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errNoXIDEvents) {
			logger.Info("Not watching XID events of a GPU that does not report them")
			return
		}
		// A lost GPU is also tainted by the periodic health check.
		logger.Error(err, "Watching XID events of a GPU failed; re-arming", "after", delay)
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(2*delay, l.watch.maxBackoff)
	}
}

// watchGPUOnce arms an event set for the GPU's XID events and forwards
// them until ctx ends (nil) or NVML fails. It calls armed after each wait
// NVML answered, which resets the caller's backoff.
func (l *library) watchGPUOnce(ctx context.Context, index int, events chan<- XIDEvent, armed func()) (err error) {
	set, ret := l.nvml.EventSetCreate()
	if err := check(ret, "create NVML event set for GPU %d", index); err != nil {
		return err
	}
	defer func() {
		if ferr := check(set.Free(), "free NVML event set of GPU %d", index); ferr != nil {
			err = errors.Join(err, ferr)
		}
	}()
	dev, ret := l.nvml.DeviceGetHandleByIndex(index)
	if err := check(ret, "get GPU %d", index); err != nil {
		return err
	}
	supported, ret := dev.GetSupportedEventTypes()
	if err := check(ret, "get supported events of GPU %d", index); err != nil {
		return err
	}
	if supported&gonvml.EventTypeXidCriticalError == 0 {
		return errNoXIDEvents
	}
	if err := check(dev.RegisterEvents(gonvml.EventTypeXidCriticalError, set), "register XID events of GPU %d", index); err != nil {
		return err
	}
	for ctx.Err() == nil {
		data, ret := set.Wait(eventWaitMs)
		switch ret {
		case gonvml.SUCCESS:
		case gonvml.ERROR_TIMEOUT:
			armed()
			continue
		default:
			return check(ret, "wait for XID events of GPU %d", index)
		}
		armed()
		if data.EventType != gonvml.EventTypeXidCriticalError {
			continue
		}
		ev := XIDEvent{GPUIndex: index, XID: data.EventData, GPUInstanceID: -1, ComputeInstanceID: -1}
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

// CheckGPU waits for MIG changes in progress: switching MIG mode "may unbind
// or reset the device" (nvmlDeviceSetMigMode), and a GPU caught in the
// middle would be tainted as lost for RecoverAfter.
func (l *library) CheckGPU(ctx context.Context, index int) error {
	l.mu.Lock()
	defer l.mu.Unlock()
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
