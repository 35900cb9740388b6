package prepare

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	resourceapi "k8s.io/api/resource/v1"

	tnvml "github.com/tessera-gpu/tessera/internal/nvml"
	"github.com/tessera-gpu/tessera/pkg/inventory"
)

// timedLibrary adds up the time spent in NVML, so that the benchmark can
// report the plugin's own overhead apart from it.
type timedLibrary struct {
	tnvml.Library
	spent atomic.Int64
}

func (l *timedLibrary) since(t time.Time) { l.spent.Add(int64(time.Since(t))) }

func (l *timedLibrary) SetMIGMode(ctx context.Context, gpu int, enabled bool) error {
	defer l.since(time.Now())
	return l.Library.SetMIGMode(ctx, gpu, enabled)
}

func (l *timedLibrary) CreateMIGDevice(ctx context.Context, gpu, profileID int, p inventory.Placement) (tnvml.MIGDevice, error) {
	defer l.since(time.Now())
	return l.Library.CreateMIGDevice(ctx, gpu, profileID, p)
}

func (l *timedLibrary) DestroyMIGDevice(ctx context.Context, gpu, id int) error {
	defer l.since(time.Now())
	return l.Library.DestroyMIGDevice(ctx, gpu, id)
}

func (l *timedLibrary) MIGDevices(ctx context.Context, gpu int) ([]tnvml.MIGDevice, error) {
	defer l.since(time.Now())
	return l.Library.MIGDevices(ctx, gpu)
}

// BenchmarkPrepareUnprepare prepares and unprepares one claim at a time on
// the dgxh200 mock and reports latency percentiles, and the plugin's own
// overhead per claim (prepare plus unprepare, less NVML time).
//
//	go test -run '^$' -bench PrepareUnprepare -benchtime 200x ./internal/prepare/
func BenchmarkPrepareUnprepare(b *testing.B) {
	for _, bc := range []struct {
		name  string
		claim func(uid string) *resourceapi.ResourceClaim
	}{
		{"whole", func(uid string) *resourceapi.ResourceClaim { return makeClaim(uid).Device("g", "gpu-3").Obj() }},
		{"mig", func(uid string) *resourceapi.ResourceClaim {
			return makeClaim(uid).Device("m", "gpu-1-mig-3g71gb-4").Obj()
		}},
		{"share", func(uid string) *resourceapi.ResourceClaim {
			return makeClaim(uid).Share("s", "gpu-5-shared", "16Gi", "25", uid).Obj()
		}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			ctx := context.Background()
			e := newTestEnv(b, "dgxh200", 8)
			lib := &timedLibrary{Library: e.lib}
			e.lib = lib
			p := e.mustPreparer(ctx)
			// A claim that stays prepared throughout, so that the
			// checkpoint is not trivially empty.
			if res := p.Prepare(ctx, makeClaim("resident").Device("m", "gpu-0-mig-1g18gb-0").Obj()); res.Err != nil {
				b.Fatal(res.Err)
			}
			lib.spent.Store(0)
			var prep, unprep []time.Duration
			var total time.Duration
			for i := 0; b.Loop(); i++ {
				c := bc.claim(fmt.Sprintf("claim-%d", i))
				t0 := time.Now()
				if res := p.Prepare(ctx, c); res.Err != nil {
					b.Fatal(res.Err)
				}
				t1 := time.Now()
				if err := p.Unprepare(ctx, ref(c)); err != nil {
					b.Fatal(err)
				}
				t2 := time.Now()
				prep, unprep = append(prep, t1.Sub(t0)), append(unprep, t2.Sub(t1))
				total += t2.Sub(t0)
				e.server.ReuseGPUInstanceIDs()
			}
			n := float64(len(prep))
			b.ReportMetric(ms(percentile(prep, 50)), "prepare-p50-ms")
			b.ReportMetric(ms(percentile(prep, 99)), "prepare-p99-ms")
			b.ReportMetric(ms(percentile(unprep, 50)), "unprepare-p50-ms")
			b.ReportMetric(ms(percentile(unprep, 99)), "unprepare-p99-ms")
			b.ReportMetric(ms(time.Duration(lib.spent.Load()))/n, "nvml-ms/claim")
			b.ReportMetric(ms(total-time.Duration(lib.spent.Load()))/n, "overhead-ms/claim")
		})
	}
}

func percentile(d []time.Duration, p int) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, len(s)*p/100)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
