package controller

import (
	"os"
	"regexp"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
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
	reg.MustRegister(tenantDeviceHours, tenantMemoryHours)
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
	for _, c := range []prometheus.Collector{tenantMemoryUsed, tenantMemoryBudget, tenantDevicesUsed, tenantDevicesBudget, allocationDecisions, tenantDeviceHours, tenantMemoryHours} {
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
