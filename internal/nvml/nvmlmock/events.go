package nvmlmock

import (
	"sync"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
)

// go-nvml's mock servers have no event sets: EventSetCreate panics. These
// add them, so that health monitoring can be tested: InjectXID delivers a
// critical XID event to every event set a GPU registered with, SetLost
// makes a GPU answer as a GPU that fell off the bus does, FailEventWait and
// FailEventRegistration make NVML's event calls fail as nvml.h allows.

// hubs holds each server's event state; Server itself is defined elsewhere
// and stays a thin wrapper.
var hubs sync.Map // *Server -> *eventHub

type eventHub struct {
	once sync.Once
	mu   sync.Mutex
	sets map[*mock.EventSet]*eventSet
	lost map[int]bool
	// regErr makes registering a GPU's events fail.
	regErr map[int]nvml.Return
}

type eventSet struct {
	ch   chan nvml.EventData
	errs chan nvml.Return // failures for the next waits
	regs map[int]uint64   // GPU index -> registered event mask
}

const xidEventTypes = nvml.EventTypeXidCriticalError | nvml.EventTypeDoubleBitEccError | nvml.EventTypeSingleBitEccError

// EnableEvents installs event-set support on the server. It is idempotent;
// the NVML library calls it when it starts watching events on a mock.
func (s *Server) EnableEvents() {
	v, _ := hubs.LoadOrStore(s, &eventHub{sets: map[*mock.EventSet]*eventSet{}, lost: map[int]bool{}, regErr: map[int]nvml.Return{}})
	h := v.(*eventHub)
	h.once.Do(func() { s.installEvents(h) })
}

func (s *Server) installEvents(h *eventHub) {
	s.EventSetCreateFunc = func() (nvml.EventSet, nvml.Return) {
		set := &eventSet{ch: make(chan nvml.EventData, 256), errs: make(chan nvml.Return, 16), regs: map[int]uint64{}}
		m := &mock.EventSet{}
		m.WaitFunc = func(timeoutMs uint32) (nvml.EventData, nvml.Return) {
			// nvmlEventSetWait_v2: "NVML_ERROR_GPU_IS_LOST if a GPU has
			// fallen off the bus or is otherwise inaccessible", for as
			// long as a GPU of the set is lost.
			if h.anyLost(set) {
				return nvml.EventData{}, nvml.ERROR_GPU_IS_LOST
			}
			select {
			case ret := <-set.errs:
				return nvml.EventData{}, ret
			case ev := <-set.ch:
				return ev, nvml.SUCCESS
			case <-time.After(time.Duration(timeoutMs) * time.Millisecond):
				return nvml.EventData{}, nvml.ERROR_TIMEOUT
			}
		}
		m.FreeFunc = func() nvml.Return {
			h.mu.Lock()
			defer h.mu.Unlock()
			delete(h.sets, m)
			return nvml.SUCCESS
		}
		h.mu.Lock()
		h.sets[m] = set
		h.mu.Unlock()
		return m, nvml.SUCCESS
	}
	for _, d := range s.Devices {
		dev := d.(*server.Device)
		dev.GetSupportedEventTypesFunc = func() (uint64, nvml.Return) { return xidEventTypes, nvml.SUCCESS }
		dev.RegisterEventsFunc = func(mask uint64, es nvml.EventSet) nvml.Return {
			h.mu.Lock()
			defer h.mu.Unlock()
			set, ok := h.sets[es.(*mock.EventSet)]
			if !ok {
				return nvml.ERROR_INVALID_ARGUMENT
			}
			// nvmlDeviceRegisterEvents: "NVML_ERROR_GPU_IS_LOST if the
			// target GPU has fallen off the bus or is otherwise
			// inaccessible", "NVML_ERROR_UNKNOWN on any unexpected error".
			if h.lost[dev.Index] {
				return nvml.ERROR_GPU_IS_LOST
			}
			if ret, ok := h.regErr[dev.Index]; ok {
				return ret
			}
			set.regs[dev.Index] |= mask
			return nvml.SUCCESS
		}
		uuid := dev.GetUUIDFunc
		dev.GetUUIDFunc = func() (string, nvml.Return) {
			h.mu.Lock()
			lost := h.lost[dev.Index]
			h.mu.Unlock()
			if lost {
				return "", nvml.ERROR_GPU_IS_LOST
			}
			return uuid()
		}
	}
}

func (s *Server) hub() *eventHub {
	h, _ := hubs.Load(s)
	return h.(*eventHub)
}

// InjectXID delivers a critical XID error of a GPU to every event set that
// registered for it. gpuInstance and computeInstance are the MIG instance
// IDs, or 0xFFFFFFFF for an error of the whole GPU, as NVML reports them.
func (s *Server) InjectXID(index int, xid uint64, gpuInstance, computeInstance uint32) {
	s.EnableEvents()
	h := s.hub()
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, set := range h.sets {
		if set.regs[index]&nvml.EventTypeXidCriticalError == 0 {
			continue
		}
		set.ch <- nvml.EventData{
			Device: s.Devices[index], EventType: nvml.EventTypeXidCriticalError, EventData: xid,
			GpuInstanceId: gpuInstance, ComputeInstanceId: computeInstance,
		}
	}
}

// SetLost makes a GPU answer ERROR_GPU_IS_LOST (lost) or normally again.
// Event waits on sets the GPU registered with fail while it is lost.
func (s *Server) SetLost(index int, lost bool) {
	s.EnableEvents()
	h := s.hub()
	h.mu.Lock()
	defer h.mu.Unlock()
	h.lost[index] = lost
	if lost {
		h.fail(index, nvml.ERROR_GPU_IS_LOST)
	}
}

// FailEventWait makes the next wait of every event set a GPU registered
// with return ret, e.g. ERROR_UNKNOWN ("on any unexpected error", nvml.h).
func (s *Server) FailEventWait(index int, ret nvml.Return) {
	s.EnableEvents()
	h := s.hub()
	h.mu.Lock()
	defer h.mu.Unlock()
	h.fail(index, ret)
}

// FailEventRegistration makes registering a GPU's events fail with ret;
// SUCCESS makes it work again.
func (s *Server) FailEventRegistration(index int, ret nvml.Return) {
	s.EnableEvents()
	h := s.hub()
	h.mu.Lock()
	defer h.mu.Unlock()
	if ret == nvml.SUCCESS {
		delete(h.regErr, index)
		return
	}
	h.regErr[index] = ret
}

// fail must be called with h.mu held.
func (h *eventHub) fail(index int, ret nvml.Return) {
	for _, set := range h.sets {
		if set.regs[index] == 0 {
			continue
		}
		select {
		case set.errs <- ret:
		default:
		}
	}
}

func (h *eventHub) anyLost(set *eventSet) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for index := range set.regs {
		if h.lost[index] {
			return true
		}
	}
	return false
}

// XIDListeners counts the event sets registered for a GPU's XID events, so
// that a test can wait for a watcher before injecting.
func (s *Server) XIDListeners(index int) int {
	s.EnableEvents()
	h := s.hub()
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, set := range h.sets {
		if set.regs[index]&nvml.EventTypeXidCriticalError != 0 {
			n++
		}
	}
	return n
}
