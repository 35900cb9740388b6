package controller

import (
	"encoding/json"
	"os"
	"regexp"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

// fakeClock is a clock the test moves.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }

// TestShowbackTimeline: a scripted day of one tenant, computed by hand.
// 00:00 it holds 2 whole GPUs and 160 GiB; 01:30 it drops to 1 GPU and 80
// GiB and takes 3 MIG devices (30 GiB more); flushes at 02:00 and 04:00
// count what it held meanwhile; 04:30 it holds nothing; 06:00 a flush adds
// nothing.
//
//	whole GPUs: 2 × 1.5 h + 1 × 3 h          = 6 device-hours
//	MIG:        3 × 3 h                        = 9 device-hours
//	memory:     160 GiB × 1.5 h + 110 GiB × 3 h = 570 GiB-hours
func TestShowbackTimeline(t *testing.T) {
	const tenant, gpu, mig = "showback-timeline", "gpu.tessera.dev", "mig.gpu.tessera.dev"
	clock := &fakeClock{t: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)}
	s := newShowback(clock.now)
	t.Cleanup(func() { s.forget(tenant) })
	s.observe(tenant, tenancy.Usage{Memory: 160 << 30, Devices: map[string]int64{gpu: 2}})
	clock.advance(90 * time.Minute)
	s.observe(tenant, tenancy.Usage{Memory: 110 << 30, Devices: map[string]int64{gpu: 1, mig: 3}})
	clock.advance(30 * time.Minute)
	s.flush()
	clock.advance(2 * time.Hour)
	s.flush()
	clock.advance(30 * time.Minute)
	s.observe(tenant, tenancy.Usage{})
	clock.advance(90 * time.Minute)
	s.flush()

	got := map[string]float64{
		gpu:     testutil.ToFloat64(tenantDeviceHours.WithLabelValues(tenant, gpu)),
		mig:     testutil.ToFloat64(tenantDeviceHours.WithLabelValues(tenant, mig)),
		"GiB-h": testutil.ToFloat64(tenantMemoryHours.WithLabelValues(tenant)) / (1 << 30),
	}
	want := map[string]float64{gpu: 6, mig: 9, "GiB-h": 570}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}

	// A deleted tenant's series go.
	s.forget(tenant)
	if n := showbackSeries(t, tenant); n != 0 {
		t.Errorf("%d series left after forgetting the tenant", n)
	}
}

// showbackSeries counts the showback series of a tenant.
func showbackSeries(t *testing.T, tenant string) int {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(tenantDeviceHours, tenantActiveDeviceHours, tenantMemoryHours)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "tenant" && l.GetValue() == tenant {
					n++
				}
			}
		}
	}
	return n
}

// TestTenantMetricsFeedShowback: every time a tenant's usage is recorded,
// the showback holds it from then on.
func TestTenantMetricsFeedShowback(t *testing.T) {
	clock := &fakeClock{t: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)}
	saved := tenantShowback
	tenantShowback = newShowback(clock.now)
	t.Cleanup(func() { tenantShowback = saved })
	tn := &tenancyv1.GPUTenant{ObjectMeta: metav1.ObjectMeta{Name: "showback-fed"}}
	t.Cleanup(func() { forgetTenantMetrics(tn.Name); tenantShowback.forget(tn.Name) })
	recordTenantMetrics(tn, tenancy.Usage{Memory: 1 << 30, Devices: map[string]int64{"gpu.tessera.dev": 4}})
	clock.advance(2 * time.Hour)
	tenantShowback.flush()
	if got := testutil.ToFloat64(tenantDeviceHours.WithLabelValues(tn.Name, "gpu.tessera.dev")); got != 8 {
		t.Errorf("device-hours = %v, want 8", got)
	}
}

// TestRulesNameServedTenantMetrics: every tessera_tenant_* metric the chart's
// recording rules and docs/observability.md name is one the controller
// serves.
func TestRulesNameServedTenantMetrics(t *testing.T) {
	served := map[string]bool{}
	ch := make(chan *prometheus.Desc, 32)
	for _, c := range []prometheus.Collector{tenantMemoryUsed, tenantMemoryBudget, tenantDevicesUsed, tenantDevicesBudget, allocationDecisions, tenantDeviceHours, tenantActiveDeviceHours, tenantMemoryHours} {
		c.Describe(ch)
	}
	close(ch)
	fqName := regexp.MustCompile(`fqName: "([^"]+)"`)
	for d := range ch {
		served[fqName.FindStringSubmatch(d.String())[1]] = true
	}
	for _, file := range []string{"../../deployments/helm/tessera/files/recording-rules.yaml", "../../docs/observability.md"} {
		raw, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range regexp.MustCompile(`tessera_tenant_[a-z_]+`).FindAllString(string(raw), -1) {
			if !served[n] {
				t.Errorf("%s names %s, which the controller does not serve", file, n)
			}
		}
	}
}

// TestShowbackStatusTimeline: a scripted night across a month's end,
// computed by hand, as the tenant's status.showback shows it.
//
//	Nov 30 22:00  holds 2 GPUs, 160 GiB; its node reports one claim (1 GPU) idle
//	Nov 30 23:30  holds 1 GPU and 3 MIG devices, 110 GiB; nothing idle
//	Dec  1 01:00  summary:
//	  November: GPU 2×1.5 + 1×0.5 = 3.5; MIG 3×0.5 = 1.5
//	            active GPU 1×1.5 + 1×0.5 = 2; active MIG 1.5
//	            memory 160×1.5 + 110×0.5 = 295 GiB-hours
//	  December: GPU 1, MIG 3, active the same, memory 110 GiB-hours
//	Dec  1 01:02  summary again: the one of 01:00 (not due for 5 minutes)
//	Dec  1 01:30  a new leader takes up the status of 01:00 and the same usage
//	Dec  1 02:30  its summary: December GPU 1+1 = 2, MIG 3+3 = 6, memory 220
//	              GiB-hours; November as before. 01:00-01:30 is lost: the old
//	              leader counted it but had not written it yet.
func TestShowbackStatusTimeline(t *testing.T) {
	const tenant, gpu, mig = "showback-status", "gpu.tessera.dev", "mig.gpu.tessera.dev"
	const every = 5 * time.Minute
	nov := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	dec := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	clock := &fakeClock{t: time.Date(2026, 11, 30, 22, 0, 0, 0, time.UTC)}
	s := newShowback(clock.now)
	t.Cleanup(func() { s.forget(tenant) })

	s.observe(tenant, tenancy.Usage{Memory: 160 << 30, Devices: map[string]int64{gpu: 2}})
	s.observeIdle(map[string]map[string]int64{tenant: {gpu: 1}})
	clock.advance(90 * time.Minute)
	s.observe(tenant, tenancy.Usage{Memory: 110 << 30, Devices: map[string]int64{gpu: 1, mig: 3}})
	s.observeIdle(nil)
	clock.advance(90 * time.Minute)
	first := s.summary(tenant, every)

	november := &tenancyv1.ShowbackWindow{
		Start:             metav1.NewTime(nov),
		DeviceHours:       hours(gpu, "3500m", mig, "1500m"),
		ActiveDeviceHours: hours(gpu, "2", mig, "1500m"),
		GPUMemoryHours:    resource.MustParse("295Gi"),
	}
	want := &tenancyv1.Showback{
		UpdatedAt: metav1.NewTime(clock.t),
		Month: &tenancyv1.ShowbackWindow{
			Start:             metav1.NewTime(dec),
			DeviceHours:       hours(gpu, "1", mig, "3"),
			ActiveDeviceHours: hours(gpu, "1", mig, "3"),
			GPUMemoryHours:    resource.MustParse("110Gi"),
		},
		PreviousMonth: november,
	}
	if diff := cmp.Diff(want, first, quantities); diff != "" {
		t.Errorf("summary at %s (-want +got):\n%s", clock.t, diff)
	}
	// The counters hold the whole night.
	gotCounters := map[string]float64{
		gpu:          testutil.ToFloat64(tenantDeviceHours.WithLabelValues(tenant, gpu)),
		"active MIG": testutil.ToFloat64(tenantActiveDeviceHours.WithLabelValues(tenant, mig)),
		"GiB-h":      testutil.ToFloat64(tenantMemoryHours.WithLabelValues(tenant)) / (1 << 30),
	}
	if diff := cmp.Diff(map[string]float64{gpu: 4.5, "active MIG": 4.5, "GiB-h": 405}, gotCounters); diff != "" {
		t.Errorf("counters (-want +got):\n%s", diff)
	}

	clock.advance(2 * time.Minute)
	s.observe(tenant, tenancy.Usage{Memory: 110 << 30, Devices: map[string]int64{gpu: 1, mig: 3}})
	if diff := cmp.Diff(first, s.summary(tenant, every), quantities); diff != "" {
		t.Errorf("summary 2 minutes later is not the last one (-want +got):\n%s", diff)
	}

	clock.advance(28 * time.Minute)
	next := newShowback(clock.now)
	t.Cleanup(func() { next.forget(tenant) })
	next.resume(&tenancyv1.GPUTenant{ObjectMeta: metav1.ObjectMeta{Name: tenant}, Status: tenancyv1.GPUTenantStatus{Showback: roundTrip(t, first)}})
	next.observe(tenant, tenancy.Usage{Memory: 110 << 30, Devices: map[string]int64{gpu: 1, mig: 3}})
	next.observeIdle(nil)
	clock.advance(time.Hour)
	want = &tenancyv1.Showback{
		UpdatedAt: metav1.NewTime(clock.t),
		Month: &tenancyv1.ShowbackWindow{
			Start:             metav1.NewTime(dec),
			DeviceHours:       hours(gpu, "2", mig, "6"),
			ActiveDeviceHours: hours(gpu, "2", mig, "6"),
			GPUMemoryHours:    resource.MustParse("220Gi"),
		},
		PreviousMonth: november,
	}
	if diff := cmp.Diff(want, next.summary(tenant, every), quantities); diff != "" {
		t.Errorf("new leader's summary at %s (-want +got):\n%s", clock.t, diff)
	}
}

// TestShowbackWithoutIdleReportsHasNoActiveHours: active device-hours are
// not claimed when no idle report was read.
func TestShowbackWithoutIdleReportsHasNoActiveHours(t *testing.T) {
	const tenant = "showback-no-idle"
	clock := &fakeClock{t: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)}
	s := newShowback(clock.now)
	t.Cleanup(func() { s.forget(tenant) })
	s.observe(tenant, tenancy.Usage{Devices: map[string]int64{"gpu.tessera.dev": 1}})
	clock.advance(time.Hour)
	got := s.summary(tenant, time.Minute)
	if got.Month.ActiveDeviceHours != nil {
		t.Errorf("active device-hours %v without idle reports", got.Month.ActiveDeviceHours)
	}
	if n := showbackSeries(t, tenant); n != 1 {
		t.Errorf("%d showback series, want 1 (device-hours only)", n)
	}
}

// quantities compares quantities by value.
var quantities = cmp.Comparer(func(a, b resource.Quantity) bool { return a.Cmp(b) == 0 })

// hours builds a DeviceHours map from class, quantity pairs.
func hours(kv ...string) map[string]resource.Quantity {
	out := map[string]resource.Quantity{}
	for i := 0; i+1 < len(kv); i += 2 {
		out[kv[i]] = resource.MustParse(kv[i+1])
	}
	return out
}

// roundTrip is sb as the API server returns it.
func roundTrip(t *testing.T, sb *tenancyv1.Showback) *tenancyv1.Showback {
	t.Helper()
	raw, err := json.Marshal(sb)
	if err != nil {
		t.Fatal(err)
	}
	out := &tenancyv1.Showback{}
	if err := json.Unmarshal(raw, out); err != nil {
		t.Fatal(err)
	}
	return out
}
