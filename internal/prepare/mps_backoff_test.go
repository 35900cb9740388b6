package prepare

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"k8s.io/klog/v2/ktesting"

	"github.com/tessera-gpu/tessera/internal/checkpoint"
)

// TestRestartBackoff: a daemon that fails to start is retried after 1, 2,
// 4 ... intervals, at most max apart; a success or the claim's end resets
// it, and other claims are not held back.
func TestRestartBackoff(t *testing.T) {
	t0 := time.Unix(0, 0)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	b := newRestartBackoff(time.Second, 5*time.Second)
	var due []float64
	for s := 0.0; s <= 20; s += 0.5 {
		if b.due("a", at(s)) {
			due = append(due, s)
			b.failed("a", at(s))
		}
	}
	if diff := cmp.Diff([]float64{0, 1, 3, 7, 12, 17}, due); diff != "" {
		t.Errorf("tries of a failing restart, in seconds (-want +got):\n%s", diff)
	}
	if !b.due("b", at(17.5)) {
		t.Error("another claim's restart is held back")
	}
	b.succeeded("a")
	if !b.due("a", at(17.5)) {
		t.Error("a success did not reset the backoff")
	}
	b.failed("a", at(18))
	b.forgetAllBut(map[string]*checkpoint.Claim{})
	if !b.due("a", at(18)) {
		t.Error("the backoff of an unprepared claim is kept")
	}
	var none *restartBackoff
	if !none.due("a", t0) {
		t.Error("without backoff, a restart is not due")
	}
}

// TestSyncMPSSeesClaimsOfAnotherInstance: during a rolling update, the
// daemon of a claim the other instance prepared after this one started is
// restarted by this one when it dies (e.g. with the other instance's pod).
func TestSyncMPSSeesClaimsOfAnotherInstance(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	e := newTestEnv(t, "dgxh200", 1)
	newP := e.mustPreparer(ctx)
	oldP := e.mustPreparer(ctx)
	c := makeClaim("c").Share("s", "gpu-0-shared", "1Gi", "10", "x").Obj()
	if res := oldP.Prepare(ctx, c); res.Err != nil {
		t.Fatal(res.Err)
	}
	e.mps.Kill("c") // the old instance's pod ended
	restarted, err := newP.SyncMPS(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"c"}, restarted); diff != "" {
		t.Errorf("restarted (-want +got):\n%s", diff)
	}
}
