// Package health turns GPU health into device taints: a critical XID error
// reported by NVML, or a GPU that no longer answers, taints every device of
// that GPU with NoSchedule, so that the scheduler stops placing new claims
// on it while running workloads keep their devices; an XID confined to one
// prepared MIG instance taints only that MIG device. A policy lifts the
// taint once the GPU is healthy again. The package also serves the gRPC
// health endpoint that the plugin's probes use.
package health

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/tessera-gpu/tessera/internal/metrics"
	tnvml "github.com/tessera-gpu/tessera/internal/nvml"
	"github.com/tessera-gpu/tessera/pkg/inventory"
	"github.com/tessera-gpu/tessera/pkg/partition"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
)

// DefaultIgnoredXIDs are XIDs that report an application's fault, not the
// GPU's (the same list NVIDIA's device plugin skips): 13 graphics engine
// exception, 31 GPU memory page fault, 43 GPU stopped processing, 45
// preemptive cleanup, 68 video processor exception, 109 context switch
// timeout.
var DefaultIgnoredXIDs = []uint64{13, 31, 43, 45, 68, 109}

// Policy decides what taints a GPU and when the taint is lifted.
type Policy struct {
	// IgnoredXIDs never taint.
	IgnoredXIDs []uint64
	// RecoverAfter lifts an XID taint once the GPU answers NVML and has
	// reported no critical XID for this long. 0 keeps XID taints until the
	// plugin restarts (after the GPU was reset).
	RecoverAfter time.Duration
	// CheckInterval is how often each GPU is asked whether it is there.
	CheckInterval time.Duration
}

// DefaultPolicy ignores application XIDs, lifts XID taints after ten quiet
// minutes and checks GPUs every ten seconds.
func DefaultPolicy() Policy {
	return Policy{IgnoredXIDs: DefaultIgnoredXIDs, RecoverAfter: 10 * time.Minute, CheckInterval: 10 * time.Second}
}

// Monitor watches the node's GPUs and keeps the set of device taints.
type Monitor struct {
	source  tnvml.Health
	policy  Policy
	ignored map[uint64]bool
	clock   clock.WithTicker
	metrics *metrics.Metrics
	gpus    []int
	// devices maps a GPU index to the names of all its devices.
	devices map[int][]string

	// migDevice names the MIG device of a GPU instance, when known.
	migDevice func(gpu, gpuInstanceID int) (string, bool)

	mu        sync.Mutex
	unhealthy map[int]*gpuHealth
	// unhealthyMIG holds taints confined to one MIG device, by GPU and
	// device name.
	unhealthyMIG map[migTarget]*gpuHealth
	changed      chan struct{}
}

type migTarget struct {
	gpu    int
	device string
}

type gpuHealth struct {
	reason string
	since  time.Time
	// last is the time of the last critical XID.
	last time.Time
	lost bool
}

// Option configures a Monitor.
type Option func(*Monitor)

// WithPolicy sets the policy (default DefaultPolicy).
func WithPolicy(p Policy) Option { return func(m *Monitor) { m.policy = p } }

// WithClock sets the clock, for tests.
func WithClock(c clock.WithTicker) Option { return func(m *Monitor) { m.clock = c } }

// WithMIGDevices lets an XID confined to one MIG instance taint only that
// MIG device: lookup names the device of a GPU instance (the prepare
// path knows which claim's partition it is).
func WithMIGDevices(lookup func(gpu, gpuInstanceID int) (string, bool)) Option {
	return func(m *Monitor) { m.migDevice = lookup }
}

// WithMetrics sets the metrics to update.
func WithMetrics(mt *metrics.Metrics) Option { return func(m *Monitor) { m.metrics = mt } }

// New returns a Monitor of the node's GPUs.
func New(source tnvml.Health, node inventory.Node, opts ...Option) *Monitor {
	m := &Monitor{
		source: source, policy: DefaultPolicy(), clock: clock.RealClock{},
		devices: map[int][]string{}, unhealthy: map[int]*gpuHealth{}, unhealthyMIG: map[migTarget]*gpuHealth{},
		changed: make(chan struct{}, 1),
	}
	for _, o := range opts {
		o(m)
	}
	m.ignored = map[uint64]bool{}
	for _, x := range m.policy.IgnoredXIDs {
		m.ignored[x] = true
	}
	if m.policy.CheckInterval <= 0 {
		m.policy.CheckInterval = 10 * time.Second
	}
	m.SetInventory(node)
	return m
}

// SetInventory makes the node's current GPUs the ones checked and whose
// devices get taints. A GPU tainted as lost that is no longer in the
// inventory keeps its taint on the devices it had, which stay published
// while they may be allocated.
func (m *Monitor) SetInventory(node inventory.Node) {
	devices := map[int][]string{}
	var gpus []int
	for _, gpu := range node.GPUs {
		gpus = append(gpus, gpu.Index)
		for _, d := range partition.Build(gpu, partition.Options{}).Devices {
			devices[gpu.Index] = append(devices[gpu.Index], d.Name)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for gpu, names := range m.devices {
		if _, still := devices[gpu]; !still && m.unhealthy[gpu] != nil {
			devices[gpu] = names
			gpus = append(gpus, gpu)
		}
	}
	slices.Sort(gpus)
	m.gpus, m.devices = gpus, devices
}

// Changed is signalled whenever the taints change.
func (m *Monitor) Changed() <-chan struct{} { return m.changed }

// Taints returns the taints of the unhealthy GPUs' devices, by device name.
func (m *Monitor) Taints() map[string][]resourceapi.DeviceTaint {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string][]resourceapi.DeviceTaint{}
	for gpu, h := range m.unhealthy {
		taint := resourceapi.DeviceTaint{
			Key: gpuapi.TaintKeyUnhealthy, Value: h.reason, Effect: resourceapi.DeviceTaintEffectNoSchedule,
			TimeAdded: &metav1.Time{Time: h.since.Truncate(time.Second)},
		}
		for _, name := range m.devices[gpu] {
			out[name] = []resourceapi.DeviceTaint{taint}
		}
	}
	for t, h := range m.unhealthyMIG {
		if _, whole := m.unhealthy[t.gpu]; whole {
			continue
		}
		out[t.device] = []resourceapi.DeviceTaint{{
			Key: gpuapi.TaintKeyUnhealthy, Value: h.reason, Effect: resourceapi.DeviceTaintEffectNoSchedule,
			TimeAdded: &metav1.Time{Time: h.since.Truncate(time.Second)},
		}}
	}
	return out
}

// Run watches XID events and checks the GPUs until ctx ends. Event
// watching that NVML refuses is logged, and the GPU checks go on.
func (m *Monitor) Run(ctx context.Context) error {
	logger := klog.FromContext(ctx)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events := make(chan tnvml.XIDEvent, 64)
	watchErr := make(chan error, 1)
	go func() { watchErr <- m.source.WatchXIDs(ctx, events) }()
	ticker := m.clock.NewTicker(m.policy.CheckInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev := <-events:
			m.observeXID(ctx, ev)
		case err := <-watchErr:
			if err != nil {
				logger.Error(err, "Watching XID events failed; only lost GPUs will be detected")
			}
			watchErr = nil
		case <-ticker.C():
			m.check(ctx)
		}
	}
}

func (m *Monitor) observeXID(ctx context.Context, ev tnvml.XIDEvent) {
	logger := klog.FromContext(ctx)
	if m.ignored[ev.XID] {
		logger.V(2).Info("Ignoring an application XID", "gpu", ev.GPUIndex, "xid", ev.XID)
		return
	}
	m.metrics.CountXID(ev.GPUIndex, ev.XID)
	now := m.clock.Now()
	if ev.GPUInstanceID >= 0 && m.migDevice != nil {
		if name, known := m.migDevice(ev.GPUIndex, ev.GPUInstanceID); known {
			t := migTarget{ev.GPUIndex, name}
			m.mu.Lock()
			h, ok := m.unhealthyMIG[t]
			if !ok {
				h = &gpuHealth{since: now, reason: fmt.Sprintf("xid-%d", ev.XID)}
				m.unhealthyMIG[t] = h
			}
			h.last = now
			m.mu.Unlock()
			// Logged when the taint is new; a device that keeps reporting
			// XIDs is counted in the metrics, not logged each time.
			if !ok {
				logger.Error(nil, "Critical XID in a MIG instance: tainting its device", "gpu", ev.GPUIndex, "xid", ev.XID,
					"gpuInstance", ev.GPUInstanceID, "device", name, "taint", gpuapi.TaintKeyUnhealthy)
				m.notify()
			} else {
				logger.V(4).Info("Critical XID in a tainted MIG instance", "gpu", ev.GPUIndex, "xid", ev.XID, "device", name)
			}
			return
		}
	}
	m.mu.Lock()
	h, ok := m.unhealthy[ev.GPUIndex]
	if !ok {
		h = &gpuHealth{since: now, reason: fmt.Sprintf("xid-%d", ev.XID)}
		m.unhealthy[ev.GPUIndex] = h
	}
	h.last = now
	m.mu.Unlock()
	if !ok {
		logger.Error(nil, "Critical XID: tainting the GPU's devices", "gpu", ev.GPUIndex, "xid", ev.XID,
			"gpuInstance", ev.GPUInstanceID, "computeInstance", ev.ComputeInstanceID, "taint", gpuapi.TaintKeyUnhealthy)
		m.notify()
	} else {
		logger.V(4).Info("Critical XID on a tainted GPU", "gpu", ev.GPUIndex, "xid", ev.XID)
	}
}

func (m *Monitor) check(ctx context.Context) {
	logger := klog.FromContext(ctx)
	now := m.clock.Now()
	changed := false
	m.mu.Lock()
	gpus := slices.Clone(m.gpus)
	m.mu.Unlock()
	for _, gpu := range gpus {
		err := m.source.CheckGPU(ctx, gpu)
		m.mu.Lock()
		h := m.unhealthy[gpu]
		switch {
		case errors.Is(err, tnvml.ErrGPULost):
			if h == nil || !h.lost {
				logger.Error(err, "GPU lost: tainting its devices", "gpu", gpu, "taint", gpuapi.TaintKeyUnhealthy)
				h = &gpuHealth{reason: "gpu-lost", since: now, lost: true}
				m.unhealthy[gpu] = h
				changed = true
			}
			h.last = now
		case err != nil:
			logger.Error(err, "Checking GPU health failed", "gpu", gpu)
		case h == nil:
		case h.lost && (m.policy.RecoverAfter <= 0 || now.Sub(h.last) >= m.policy.RecoverAfter):
			// A GPU that flaps between lost and present stays tainted
			// until it has answered for RecoverAfter, instead of being
			// republished at every check.
			logger.Info("GPU answers again: lifting its taint", "gpu", gpu, "answeringFor", now.Sub(h.last))
			delete(m.unhealthy, gpu)
			changed = true
		case h.lost:
			// Answering, but not for long enough yet.
		case m.policy.RecoverAfter > 0 && now.Sub(h.last) >= m.policy.RecoverAfter:
			logger.Info("GPU quiet since its last critical XID: lifting its taint", "gpu", gpu, "reason", h.reason, "quietFor", now.Sub(h.last))
			delete(m.unhealthy, gpu)
			changed = true
		}
		for t, h := range m.unhealthyMIG {
			if t.gpu == gpu && err == nil && m.policy.RecoverAfter > 0 && now.Sub(h.last) >= m.policy.RecoverAfter {
				logger.Info("MIG device quiet since its last critical XID: lifting its taint", "gpu", gpu, "device", t.device, "reason", h.reason)
				delete(m.unhealthyMIG, t)
				changed = true
			}
		}
		m.mu.Unlock()
	}
	if changed {
		m.notify()
	}
}

func (m *Monitor) notify() {
	n := len(m.Taints())
	m.metrics.SetDeviceTaints(n)
	select {
	case m.changed <- struct{}{}:
	default:
	}
}

// UnhealthyGPUs lists the tainted GPUs' indexes, sorted.
func (m *Monitor) UnhealthyGPUs() []int {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []int
	for gpu := range m.unhealthy {
		out = append(out, gpu)
	}
	sort.Ints(out)
	return out
}
