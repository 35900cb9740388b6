package claimusage_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"k8s.io/klog/v2/ktesting"

	"github.com/tessera-gpu/tessera/internal/checkpoint"
	"github.com/tessera-gpu/tessera/internal/claimusage"
	tnvml "github.com/tessera-gpu/tessera/internal/nvml"
)

// fakeClaims holds claims prepared as given.
type fakeClaims struct{ claims []*checkpoint.Claim }

func (f *fakeClaims) PreparedClaims() []*checkpoint.Claim { return f.claims }
func (f *fakeClaims) MPSProcesses(context.Context) (map[string][]int, error) {
	return map[string][]int{}, nil
}

// slowTelemetry answers a whole GPU's reading once release is closed, as a
// slow NVML call would, after telling entered.
type slowTelemetry struct {
	tnvml.Telemetry
	entered, release chan struct{}
}

func (s *slowTelemetry) GPUUsage(context.Context, string) (tnvml.GPUUsage, error) {
	close(s.entered)
	<-s.release
	util := 0.5
	return tnvml.GPUUsage{Utilization: &util}, nil
}

// TestForgetDuringSlowSample: an unprepare in the middle of a sample (NVML
// slow to answer) neither waits for the sample nor sees its claim's series
// come back when the sample ends; scrapes do not wait for it either.
func TestForgetDuringSlowSample(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	claims := &fakeClaims{claims: []*checkpoint.Claim{{UID: "u", Namespace: "ns", Name: "c", State: checkpoint.PrepareCompleted,
		Devices: []checkpoint.Device{{Request: "g", Device: "gpu-0", Kind: "gpu", GPUUUID: "GPU-0"}}}}}
	tele := &slowTelemetry{entered: make(chan struct{}), release: make(chan struct{})}
	s := claimusage.New(claims, tele)
	done := make(chan error, 1)
	go func() { done <- s.Sample(ctx) }()
	<-tele.entered

	forgot := make(chan struct{})
	go func() {
		s.Forget("u")
		_ = testutil.CollectAndCount(s)
		close(forgot)
	}()
	select {
	case <-forgot:
	case <-time.After(10 * time.Second):
		t.Fatal("Forget or a scrape waited for a sample in progress")
	}
	close(tele.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(s); n != 0 {
		t.Errorf("%d series after the claim was forgotten during the sample, want 0", n)
	}
}

// TestScrapesDuringSamples: scrapes read the series while samples replace
// them and count energy on (run with -race).
func TestScrapesDuringSamples(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	n := newNode(t, ctx, "dgxh100", 2)
	n.prepare(t, ctx, claim("w").Device("g", "gpu-0").ReservedFor("pod", "p").Obj())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 50 {
			n.server.AddEnergy(0, 100)
			if err := n.sampler.Sample(ctx); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for {
		select {
		case <-done:
			if got := n.scrape(t); len(got) == 0 {
				t.Error("no series after the samples")
			}
			return
		default:
			_ = n.scrape(t)
		}
	}
}
