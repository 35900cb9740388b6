package controller

import (
	"context"
	"maps"
	"math"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

// Showback: what each tenant held over time, in its budget's units, as
// counters a platform team takes the increase of over a month
// (docs/observability.md), and summarised in the tenant's status.
var (
	tenantDeviceHours = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "tessera", Subsystem: "tenant", Name: "device_hours_total",
		Help: "Device-hours held by the tenant's admitted allocations, by DeviceClass: tessera_tenant_devices_used integrated over time, in the unit of the tenant's device budget.",
	}, []string{"tenant", "class"})
	tenantActiveDeviceHours = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "tessera", Subsystem: "tenant", Name: "active_device_hours_total",
		Help: "The part of tessera_tenant_device_hours_total held by claims that their node's kubelet plugin did not report idle (below its --idle-threshold); counted only while the controller reads the idle reports (--idle-after).",
	}, []string{"tenant", "class"})
	tenantMemoryHours = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "tessera", Subsystem: "tenant", Name: "gpu_memory_byte_hours_total",
		Help: "GPU memory held by the tenant's admitted allocations over time, in byte-hours: tessera_tenant_gpu_memory_used_bytes integrated over time (the GPU memory budget is in bytes).",
	}, []string{"tenant"})
)

func init() {
	ctrlmetrics.Registry.MustRegister(tenantDeviceHours, tenantActiveDeviceHours, tenantMemoryHours)
}

// DefaultShowbackStatusInterval is how often a tenant's status.showback is
// brought up to date: often enough to follow a day, rarely enough that a
// busy tenant's status is not rewritten on every admission decision.
const DefaultShowbackStatusInterval = 5 * time.Minute

// tenantShowback is the controller's showback. A tenant's usage changes only
// when its reconcile computes it again (every change of its claims
// reconciles it), so it is held constant in between; flushes every minute
// bring the counters up to date without reconciling.
var tenantShowback = newShowback(time.Now)

// showback integrates each tenant's usage over time into the counters and
// into per-month windows for the tenant's status.
type showback struct {
	now func() time.Time

	mu sync.Mutex
	// held is, by tenant, its usage and since when the counters hold it.
	held map[string]*heldSince
	// activeKnown is whether idle reports are read: active device-hours
	// are counted only then.
	activeKnown bool
}

type heldSince struct {
	usage tenancy.Usage
	// idle is, per DeviceClass, the devices of usage that their claims'
	// nodes report idle.
	idle  map[string]int64
	since time.Time
	// month and previous are the current and the previous calendar
	// month's windows; nil until something was counted in them.
	month, previous *window
	// published is the summary last handed out for the status, made at
	// publishedAt.
	published   *tenancyv1.Showback
	publishedAt time.Time
}

// window is what a tenant held in one calendar month.
type window struct {
	start                    time.Time
	deviceHours, activeHours map[string]float64
	memoryByteHours          float64
}

func newShowback(now func() time.Time) *showback {
	return &showback{now: now, held: map[string]*heldSince{}}
}

// monthStart is the first instant of t's calendar month in UTC.
func monthStart(t time.Time) time.Time {
	y, m, _ := t.UTC().Date()
	return time.Date(y, m, 1, 0, 0, 0, 0, time.UTC)
}

// observe counts the tenant's previous usage up to now, and holds u from now.
func (s *showback) observe(tenant string, u tenancy.Usage) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	h := s.entry(tenant, now)
	s.accrue(tenant, now)
	h.usage = tenancy.Usage{Memory: u.Memory, Devices: maps.Clone(u.Devices)}
}

// entry is the tenant's entry, new (holding nothing from now) when it had
// none. Must be called with s.mu held.
func (s *showback) entry(tenant string, now time.Time) *heldSince {
	h, ok := s.held[tenant]
	if !ok {
		h = &heldSince{since: now}
		s.held[tenant] = h
	}
	return h
}

// resume takes up the windows of a tenant's status (written by an earlier
// leader) when the showback holds nothing of the tenant yet, so that a new
// leader continues the month instead of starting it again.
func (s *showback) resume(t *tenancyv1.GPUTenant) {
	sb := t.Status.Showback
	if sb == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.held[t.Name]; ok {
		return
	}
	h := s.entry(t.Name, s.now())
	h.month, h.previous = windowOf(sb.Month), windowOf(sb.PreviousMonth)
	if h.month != nil && h.previous != nil && !h.previous.start.Equal(h.month.start.AddDate(0, -1, 0)) {
		h.previous = nil
	}
}

// observeIdle takes, by tenant, the devices per DeviceClass whose claims
// their nodes report idle; a tenant left out has none.
func (s *showback) observeIdle(idle map[string]map[string]int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	for tenant, h := range s.held {
		s.accrue(tenant, now)
		h.idle = maps.Clone(idle[tenant])
	}
	s.activeKnown = true
}

// forget drops a deleted tenant and its series (Prometheus keeps what it
// scraped of them).
func (s *showback) forget(tenant string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.held, tenant)
	for _, c := range []*prometheus.CounterVec{tenantDeviceHours, tenantActiveDeviceHours, tenantMemoryHours} {
		c.DeletePartialMatch(prometheus.Labels{"tenant": tenant})
	}
}

// flush counts every tenant's usage up to now.
func (s *showback) flush() {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	for tenant := range s.held {
		s.accrue(tenant, now)
	}
}

// accrue adds the tenant's held usage from its since to now, to the
// counters and to the windows of the months the time falls in. Must be
// called with s.mu held.
func (s *showback) accrue(tenant string, now time.Time) {
	h, ok := s.held[tenant]
	if !ok || !now.After(h.since) {
		return
	}
	// One step per calendar month between since and now.
	for from := h.since; from.Before(now); {
		start := monthStart(from)
		to := start.AddDate(0, 1, 0)
		if now.Before(to) {
			to = now
		}
		s.count(tenant, h, h.window(start), to.Sub(from).Hours())
		from = to
	}
	h.since = now
}

// count adds hours of the tenant's held usage to the counters and to w
// (nil: a month too old to keep).
func (s *showback) count(tenant string, h *heldSince, w *window, hours float64) {
	for class, n := range h.usage.Devices {
		if n <= 0 {
			continue
		}
		tenantDeviceHours.WithLabelValues(tenant, class).Add(float64(n) * hours)
		if w != nil {
			w.deviceHours[class] += float64(n) * hours
		}
		if !s.activeKnown {
			continue
		}
		active := float64(max(0, n-h.idle[class])) * hours
		tenantActiveDeviceHours.WithLabelValues(tenant, class).Add(active)
		if w != nil {
			w.activeHours[class] += active
		}
	}
	if h.usage.Memory > 0 {
		tenantMemoryHours.WithLabelValues(tenant).Add(float64(h.usage.Memory) * hours)
		if w != nil {
			w.memoryByteHours += float64(h.usage.Memory) * hours
		}
	}
}

// window is the window of the month that starts at start: the current
// one, the previous one, or a new current one (the current becoming the
// previous when it is the month before). nil for an older month.
func (h *heldSince) window(start time.Time) *window {
	switch {
	case h.month == nil || start.After(h.month.start):
		prev := h.month
		if prev != nil && !prev.start.Equal(start.AddDate(0, -1, 0)) {
			prev = nil
		}
		h.previous, h.month = prev, newWindow(start)
		return h.month
	case start.Equal(h.month.start):
		return h.month
	case h.previous != nil && start.Equal(h.previous.start):
		return h.previous
	case start.Equal(h.month.start.AddDate(0, -1, 0)):
		h.previous = newWindow(start)
		return h.previous
	}
	return nil
}

func newWindow(start time.Time) *window {
	return &window{start: start, deviceHours: map[string]float64{}, activeHours: map[string]float64{}}
}

// summary is the tenant's status.showback: brought up to date when the last
// one is older than every or of an earlier month, otherwise the last one
// again, so that status writes follow every, not every decision. nil when
// the showback holds nothing of the tenant.
func (s *showback) summary(tenant string, every time.Duration) *tenancyv1.Showback {
	s.mu.Lock()
	defer s.mu.Unlock()
	h, ok := s.held[tenant]
	if !ok {
		return nil
	}
	// The status holds seconds; so does the summary, or every status
	// read back would differ from it.
	now := s.now().Truncate(time.Second)
	if h.published == nil || now.Sub(h.publishedAt) >= every || !monthStart(now).Equal(monthStart(h.publishedAt)) {
		s.accrue(tenant, now)
		h.window(monthStart(now))
		h.published = &tenancyv1.Showback{
			UpdatedAt:     metav1.NewTime(now),
			Month:         h.month.status(s.activeKnown),
			PreviousMonth: h.previous.status(s.activeKnown),
		}
		h.publishedAt = now
	}
	return h.published.DeepCopy()
}

// status is w in the form of the tenant's status: device-hours in
// thousandths, byte-hours in whole MiB-hours (so that they read as 570Gi,
// not as a count of bytes).
func (w *window) status(active bool) *tenancyv1.ShowbackWindow {
	if w == nil {
		return nil
	}
	out := &tenancyv1.ShowbackWindow{
		Start:          metav1.NewTime(w.start),
		DeviceHours:    hoursStatus(w.deviceHours),
		GPUMemoryHours: *resource.NewQuantity(int64(math.Round(w.memoryByteHours/(1<<20)))<<20, resource.BinarySI),
	}
	if active {
		out.ActiveDeviceHours = hoursStatus(w.activeHours)
	}
	return out
}

func hoursStatus(hours map[string]float64) map[string]resource.Quantity {
	if len(hours) == 0 {
		return nil
	}
	out := make(map[string]resource.Quantity, len(hours))
	for class, h := range hours {
		out[class] = *resource.NewMilliQuantity(int64(math.Round(h*1000)), resource.DecimalSI)
	}
	return out
}

// windowOf is the window a status holds.
func windowOf(w *tenancyv1.ShowbackWindow) *window {
	if w == nil {
		return nil
	}
	out := newWindow(monthStart(w.Start.Time))
	for class, q := range w.DeviceHours {
		out.deviceHours[class] = q.AsApproximateFloat64()
	}
	for class, q := range w.ActiveDeviceHours {
		out.activeHours[class] = q.AsApproximateFloat64()
	}
	out.memoryByteHours = w.GPUMemoryHours.AsApproximateFloat64()
	return out
}

// run flushes every interval until ctx ends. It runs on the elected leader
// only, which alone reconciles tenants.
func (s *showback) run(ctx context.Context, interval time.Duration) error {
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			s.flush()
			return nil
		case <-ticker.C:
			s.flush()
		}
	}
}
