package claimusage_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	resourceapi "k8s.io/api/resource/v1"

	"github.com/tessera-gpu/tessera/internal/claimusage"
	tnvml "github.com/tessera-gpu/tessera/internal/nvml"
	"github.com/tessera-gpu/tessera/internal/nvml/nvmlmock"
)

// timedTelemetry adds up the time spent in NVML's reads.
type timedTelemetry struct {
	tnvml.Telemetry
	spent atomic.Int64
}

func (t *timedTelemetry) since(start time.Time) { t.spent.Add(int64(time.Since(start))) }

func (t *timedTelemetry) GPUUsage(ctx context.Context, uuid string) (tnvml.GPUUsage, error) {
	defer t.since(time.Now())
	return t.Telemetry.GPUUsage(ctx, uuid)
}

func (t *timedTelemetry) MIGUsage(ctx context.Context, uuid string, gi int, prev *tnvml.GPMSample) (tnvml.MIGUsage, *tnvml.GPMSample, error) {
	defer t.since(time.Now())
	return t.Telemetry.MIGUsage(ctx, uuid, gi, prev)
}

func (t *timedTelemetry) Processes(ctx context.Context, uuid string, since uint64) ([]tnvml.ProcessUsage, uint64, error) {
	defer t.since(time.Now())
	return t.Telemetry.Processes(ctx, uuid, since)
}

// BenchmarkSample samples a node of 8 H200s holding 50 claims, each
// reserved for one pod: 2 whole GPUs, 21 MIG instances (1g.18gb, 7 on each
// of 3 GPUs) and 27 MPS shares (9 on each of 3 GPUs, two processes each),
// and reports the plugin's own CPU time per sample, NVML (mock) time aside,
// and the time of one scrape of the resulting series.
//
//	go test -run '^$' -bench Sample -benchtime 2000x ./internal/claimusage/
func BenchmarkSample(b *testing.B) {
	ctx := context.Background()
	n := newNode(b, ctx, "dgxh200", 8)
	timed := &timedTelemetry{Telemetry: n.lib.(tnvml.Telemetry)}
	n.sampler = claimusage.New(n.preparer, timed)
	var claims []*resourceapi.ResourceClaim
	for gpu := range 2 {
		claims = append(claims, claim(fmt.Sprintf("whole-%d", gpu)).Device("g", fmt.Sprintf("gpu-%d", gpu)).ReservedFor("pod", "p").Obj())
	}
	for gpu := 2; gpu < 5; gpu++ {
		for start := range 7 {
			uid := fmt.Sprintf("mig-%d-%d", gpu, start)
			claims = append(claims, claim(uid).Device("m", fmt.Sprintf("gpu-%d-mig-1g18gb-%d", gpu, start)).ReservedFor("pod", "p").Obj())
		}
	}
	pid := 1000
	var busy []func()
	for gpu := 5; gpu < 8; gpu++ {
		var procs []nvmlmock.Process
		for i := range 9 {
			uid := fmt.Sprintf("share-%d-%d", gpu, i)
			claims = append(claims, claim(uid).Share("s", fmt.Sprintf("gpu-%d-shared", gpu), "8Gi", "10", uid).ReservedFor("pod", "p").Obj())
			procs = append(procs, nvmlmock.Process{PID: uint32(pid), MemoryUsedBytes: 1 << 30, SMUtilPercent: 5}, nvmlmock.Process{PID: uint32(pid + 1), MemoryUsedBytes: 1 << 30, SMUtilPercent: 3})
			busy = append(busy, func() { n.mps.SetProcesses(uid, pid, pid+1) })
			pid += 2
		}
		busy = append(busy, func() { n.server.SetProcesses(gpu, procs...) })
	}
	for _, c := range claims {
		n.prepare(b, ctx, c)
	}
	for _, f := range busy {
		f()
	}
	if len(n.preparer.PreparedClaims()) != 50 {
		b.Fatalf("%d claims prepared, want 50", len(n.preparer.PreparedClaims()))
	}
	b.Run("sample", func(b *testing.B) {
		timed.spent.Store(0)
		b.ReportAllocs()
		b.ResetTimer()
		for range b.N {
			if err := n.sampler.Sample(ctx); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		nvml := float64(timed.spent.Load()) / float64(b.N)
		total := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
		b.ReportMetric(nvml/1e3, "nvml-µs/sample")
		b.ReportMetric((total-nvml)/1e3, "plugin-µs/sample")
	})
	b.Run("scrape", func(b *testing.B) {
		reg := prometheus.NewRegistry()
		reg.MustRegister(n.sampler)
		b.ReportAllocs()
		for range b.N {
			mfs, err := reg.Gather()
			if err != nil {
				b.Fatal(err)
			}
			if len(mfs) != 4 {
				b.Fatalf("%d metric families, want 4", len(mfs))
			}
		}
	})
}
