package controller

import (
	"context"
	"maps"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

// Showback: what each tenant held over time, in its budget's units, as
// counters a platform team takes the increase of over a month
// (docs/observability.md).
var (
	tenantDeviceHours = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "tessera", Subsystem: "tenant", Name: "device_hours_total",
		Help: "Device-hours held by the tenant's admitted allocations, by DeviceClass: tessera_tenant_devices_used integrated over time, in the unit of the tenant's device budget.",
	}, []string{"tenant", "class"})
	tenantMemoryHours = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "tessera", Subsystem: "tenant", Name: "gpu_memory_byte_hours_total",
		Help: "GPU memory held by the tenant's admitted allocations over time, in byte-hours: tessera_tenant_gpu_memory_used_bytes integrated over time (the GPU memory budget is in bytes).",
	}, []string{"tenant"})
)

func init() {
	ctrlmetrics.Registry.MustRegister(tenantDeviceHours, tenantMemoryHours)
}

// tenantShowback is the controller's showback. A tenant's usage changes only
// when its reconcile computes it again (every change of its claims
// reconciles it), so it is held constant in between; flushes every minute
// bring the counters up to date without reconciling.
var tenantShowback = newShowback(time.Now)

// showback integrates each tenant's usage over time into the counters.
type showback struct {
	now func() time.Time

	mu sync.Mutex
	// held is, by tenant, its usage and since when the counters hold it.
	held map[string]heldSince
}

type heldSince struct {
	usage tenancy.Usage
	since time.Time
}

func newShowback(now func() time.Time) *showback {
	return &showback{now: now, held: map[string]heldSince{}}
}

// observe counts the tenant's previous usage up to now, and holds u from now.
func (s *showback) observe(tenant string, u tenancy.Usage) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	s.accrue(tenant, now)
	s.held[tenant] = heldSince{usage: tenancy.Usage{Memory: u.Memory, Devices: maps.Clone(u.Devices)}, since: now}
}

// forget drops a deleted tenant and its series (Prometheus keeps what it
// scraped of them).
func (s *showback) forget(tenant string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.held, tenant)
	tenantDeviceHours.DeletePartialMatch(prometheus.Labels{"tenant": tenant})
	tenantMemoryHours.DeletePartialMatch(prometheus.Labels{"tenant": tenant})
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

// accrue adds the tenant's held usage from its since to now. Must be called
// with s.mu held.
func (s *showback) accrue(tenant string, now time.Time) {
	h, ok := s.held[tenant]
	if !ok {
		return
	}
	hours := now.Sub(h.since).Hours()
	if hours <= 0 {
		return
	}
	for class, n := range h.usage.Devices {
		if n > 0 {
			tenantDeviceHours.WithLabelValues(tenant, class).Add(float64(n) * hours)
		}
	}
	if h.usage.Memory > 0 {
		tenantMemoryHours.WithLabelValues(tenant).Add(float64(h.usage.Memory) * hours)
	}
	h.since = now
	s.held[tenant] = h
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
