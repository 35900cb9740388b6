package prepare

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"k8s.io/klog/v2/ktesting"
)

func TestSyncMPSRestartsKilledDaemon(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	e := newTestEnv(t, "dgxh200", 2)
	p := e.mustPreparer(ctx)
	c := makeClaim("c").share("s", "gpu-1-shared", "1Gi", "10", "x").obj()
	if res := p.Prepare(ctx, c); res.Err != nil {
		t.Fatal(res.Err)
	}
	want := e.state().Daemons
	for _, uuid := range want {
		e.mps.Kill(uuid)
	}
	restarted, err := p.SyncMPS(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, restarted); diff != "" {
		t.Errorf("restarted (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(want, e.state().Daemons); diff != "" {
		t.Errorf("running daemons (-want +got):\n%s", diff)
	}
	if err := p.Unprepare(ctx, ref(c)); err != nil {
		t.Fatal(err)
	}
	if restarted, err := p.SyncMPS(ctx); err != nil || len(restarted) != 0 {
		t.Errorf("SyncMPS without claims restarted %v, %v", restarted, err)
	}
}
