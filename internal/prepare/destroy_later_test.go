package prepare

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"k8s.io/client-go/tools/events"
	"k8s.io/klog/v2/ktesting"

	"github.com/tessera-gpu/tessera/internal/metrics"
	tnvml "github.com/tessera-gpu/tessera/internal/nvml"
)

// failingDestroy fails the first n DestroyMIGDevice calls with IN_USE, as
// nvmlGpuInstanceDestroy does "If the GPU instance is in use" (nvml.h: "
// NVML_ERROR_IN_USE If the GPU instance is in use. This error would be
// returned if processes (e.g. CUDA application) or compute instances are
// active on the GPU instance."), and counts the calls.
type failingDestroy struct {
	tnvml.Library
	fails *atomic.Int64
	calls *atomic.Int64
}

// errInUse stands for NVML's IN_USE (only internal/nvml imports go-nvml).
var errInUse = errors.New("destroy GPU instance: In use by another client")

func newFailingDestroy(lib tnvml.Library, n int64) failingDestroy {
	f := failingDestroy{Library: lib, fails: &atomic.Int64{}, calls: &atomic.Int64{}}
	f.fails.Store(n)
	return f
}

func (f failingDestroy) DestroyMIGDevice(ctx context.Context, gpu, id int) error {
	f.calls.Add(1)
	if f.fails.Add(-1) >= 0 {
		return errInUse
	}
	return f.Library.DestroyMIGDevice(ctx, gpu, id)
}

// drain returns the "type reason" of the Events recorded so far.
func drain(rec *events.FakeRecorder) []string {
	var out []string
	for {
		select {
		case e := <-rec.Events:
			fields := strings.Fields(e)
			out = append(out, fields[0]+" "+fields[1])
		default:
			return out
		}
	}
}

// TestUndestroyableMIGInstanceIsDestroyedLater: the mock's destroy of the
// instance fails twice with IN_USE, in the unprepare and in the first retry. The unprepare completes anyway; the instance is recorded,
// survives a plugin restart, holds its placement (a claim on it or on the
// whole GPU is refused, its device stays withdrawn), shows in a metric and
// an Event, and the background retry destroys it and frees the placement.
func TestUndestroyableMIGInstanceIsDestroyedLater(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	e := newTestEnv(t, "dgxh200", 1)
	m := metrics.New()
	rec := events.NewFakeRecorder(100)
	opts := []Option{WithMetrics(m), WithEvents(rec)}
	p := e.mustPreparer(ctx, opts...)
	const dev = "gpu-0-mig-1g18gb-0"
	a := makeClaim("a").Device("m", dev).Obj()
	if res := p.Prepare(ctx, a); res.Err != nil {
		t.Fatal(res.Err)
	}
	e.server.FailDestroys(0, 2) // a CUDA process still runs on it
	if err := p.Unprepare(ctx, ref(a)); err != nil {
		t.Fatalf("unprepare with an instance that will not go: %v", err)
	}
	if st := e.state(); len(st.Claims) != 0 || len(st.MIG) != 1 {
		t.Errorf("after unprepare: claims %v, MIG %v; want none, the instance left", st.Claims, st.MIG)
	}
	if diff := cmp.Diff([]string{"Warning " + ReasonMIGDestroyDeferred}, drain(rec)); diff != "" {
		t.Errorf("Events (-want +got):\n%s", diff)
	}
	if v := metricValue(t, m, "tessera_mig_destroy_pending"); v != 1 {
		t.Errorf("tessera_mig_destroy_pending = %v, want 1", v)
	}

	// A restart forgets nothing.
	p = e.mustPreparer(ctx, opts...)
	if !preparedNow(t, ctx, p)[dev] {
		t.Errorf("after a restart, %s is not withdrawn: %v", dev, preparedNow(t, ctx, p))
	}
	for _, b := range []string{dev, "gpu-0"} {
		res := p.Prepare(ctx, makeClaim("b").Device("d", b).Obj())
		if res.Err == nil || !strings.Contains(res.Err.Error(), "could not destroy") {
			t.Errorf("prepare %s over the instance left: %v, want a refusal", b, res.Err)
		}
	}
	if left, err := p.RetryPendingDestroys(ctx); left != 1 || err == nil {
		t.Errorf("retry while still in use: %d left, %v; want 1 and the error", left, err)
	}
	if left, err := p.RetryPendingDestroys(ctx); left != 0 || err != nil {
		t.Errorf("retry once free: %d left, %v", left, err)
	}
	if diff := cmp.Diff(e.cleanState(), e.state(), cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("node after the background destroy (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"Normal " + ReasonMIGDestroyed}, drain(rec)); diff != "" {
		t.Errorf("Events (-want +got):\n%s", diff)
	}
	if v := metricValue(t, m, "tessera_mig_destroy_pending"); v != 0 {
		t.Errorf("tessera_mig_destroy_pending = %v, want 0", v)
	}
	if v := metricValue(t, m, "tessera_mig_destroy_failures_total"); v != 2 {
		t.Errorf("tessera_mig_destroy_failures_total = %v, want 2", v)
	}
	if preparedNow(t, ctx, p)[dev] {
		t.Errorf("%s still withdrawn once destroyed", dev)
	}
	b := makeClaim("b").Device("d", dev).Obj()
	if res := p.Prepare(ctx, b); res.Err != nil {
		t.Errorf("prepare on the freed placement: %v", res.Err)
	}
}

// TestPendingDestroyGoneAfterReset: a GPU reset takes the instance an
// unprepare left (and MIG mode): the record is dropped without another
// destroy.
func TestPendingDestroyGoneAfterReset(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	e := newTestEnv(t, "dgxh200", 1)
	lib := newFailingDestroy(e.lib, 1<<40)
	rec := events.NewFakeRecorder(100)
	p := e.mustPreparer(ctx, withNVML(lib), WithEvents(rec))
	a := makeClaim("a").Device("m", "gpu-0-mig-3g71gb-4").Obj()
	if res := p.Prepare(ctx, a); res.Err != nil {
		t.Fatal(res.Err)
	}
	if err := p.Unprepare(ctx, ref(a)); err != nil {
		t.Fatal(err)
	}
	e.server.ResetGPU(0)
	calls := lib.calls.Load()
	if left, err := p.RetryPendingDestroys(ctx); left != 0 || err != nil {
		t.Errorf("retry after a reset: %d left, %v", left, err)
	}
	if n := lib.calls.Load() - calls; n != 0 {
		t.Errorf("%d destroys of an instance a reset took", n)
	}
	if diff := cmp.Diff([]string{"Warning " + ReasonMIGDestroyDeferred, "Normal " + ReasonMIGDestroyed}, drain(rec)); diff != "" {
		t.Errorf("Events (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(e.cleanState(), e.state(), cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("node (-want +got):\n%s", diff)
	}
}

// TestPendingDestroyNotRecordedKeepsClaim: where the record of the
// instance cannot be written, the claim is not forgotten: the unprepare
// fails and the kubelet's retry finishes it.
func TestPendingDestroyNotRecordedKeepsClaim(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	e := newTestEnv(t, "dgxh200", 1)
	lib := newFailingDestroy(e.lib, 1)
	p := e.mustPreparer(ctx, withNVML(lib))
	errFull := errors.New("disk full")
	p.pendingDestroyFault = func(int) error { return errFull }
	a := makeClaim("a").Device("m", "gpu-0-mig-1g18gb-0").Obj()
	if res := p.Prepare(ctx, a); res.Err != nil {
		t.Fatal(res.Err)
	}
	if err := p.Unprepare(ctx, ref(a)); !errors.Is(err, errFull) {
		t.Fatalf("unprepare whose instance cannot be recorded: %v, want the write's error", err)
	}
	if st := e.state(); len(st.Claims) != 1 {
		t.Errorf("claims after the failed unprepare: %v, want it kept", st.Claims)
	}
	if err := p.Unprepare(ctx, ref(a)); err != nil {
		t.Fatalf("retried unprepare: %v", err)
	}
	if diff := cmp.Diff(e.cleanState(), e.state(), cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("node (-want +got):\n%s", diff)
	}
}

// TestWatchPendingDestroysRetriesWithBackoff: the background loop keeps
// trying until the instance goes, then the placement is offered again.
func TestWatchPendingDestroysRetriesWithBackoff(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	e := newTestEnv(t, "dgxh200", 1)
	lib := newFailingDestroy(e.lib, 4)
	p := e.mustPreparer(ctx, withNVML(lib))
	const dev = "gpu-0-mig-1g18gb-0"
	a := makeClaim("a").Device("m", dev).Obj()
	if res := p.Prepare(ctx, a); res.Err != nil {
		t.Fatal(res.Err)
	}
	if err := p.Unprepare(ctx, ref(a)); err != nil {
		t.Fatal(err)
	}
	done := make(chan error)
	go func() { done <- p.WatchPendingDestroys(ctx, time.Millisecond) }()
	deadline := time.Now().Add(10 * time.Second)
	for preparedNow(t, ctx, p)[dev] && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("watch: %v", err)
	}
	if diff := cmp.Diff(e.cleanState(), e.state(), cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("node after the watch (-want +got):\n%s", diff)
	}
}

// TestPendingDestroySeenByTheOtherInstance: during a rolling update, the
// instance an unprepare of one plugin left holds its placement for the
// other plugin too.
func TestPendingDestroySeenByTheOtherInstance(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	e := newTestEnv(t, "dgxh200", 1)
	lib := newFailingDestroy(e.lib, 1<<40)
	old := e.mustPreparer(ctx, withNVML(lib))
	updated := e.mustPreparer(ctx, withNVML(lib))
	const dev = "gpu-0-mig-2g35gb-2"
	a := makeClaim("a").Device("m", dev).Obj()
	if res := old.Prepare(ctx, a); res.Err != nil {
		t.Fatal(res.Err)
	}
	if err := old.Unprepare(ctx, ref(a)); err != nil {
		t.Fatal(err)
	}
	res := updated.Prepare(ctx, makeClaim("b").Device("m", "gpu-0-mig-1g18gb-3").Obj())
	if res.Err == nil || !strings.Contains(res.Err.Error(), "could not destroy") {
		t.Errorf("the other instance prepared over the instance left: %v, want a refusal", res.Err)
	}
	if !preparedNow(t, ctx, updated)[dev] {
		t.Errorf("the other instance does not withdraw %s", dev)
	}
}

// preparedNow reads p.PreparedDevices and releases the state lock at once.
func preparedNow(t *testing.T, ctx context.Context, p *Preparer) map[string]bool {
	t.Helper()
	devices, release, err := p.PreparedDevices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	release()
	return devices
}
