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
	c := makeClaim("c").Share("s", "gpu-1-shared", "1Gi", "10", "x").Obj()
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

func TestMIGDeviceName(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	e := newTestEnv(t, "dgxh200", 2)
	p := e.mustPreparer(ctx)
	c := makeClaim("c").Device("m", "gpu-1-mig-2g35gb-4").Obj()
	if res := p.Prepare(ctx, c); res.Err != nil {
		t.Fatal(res.Err)
	}
	migs, err := e.lib.MIGDevices(ctx, 1)
	if err != nil || len(migs) != 1 {
		t.Fatalf("MIG devices: %v, %v", migs, err)
	}
	if name, ok := p.MIGDeviceName(1, migs[0].GPUInstanceID); !ok || name != "gpu-1-mig-2g35gb-4" {
		t.Errorf("MIGDeviceName = %q, %v; want gpu-1-mig-2g35gb-4", name, ok)
	}
	if _, ok := p.MIGDeviceName(0, migs[0].GPUInstanceID); ok {
		t.Errorf("MIGDeviceName found a device on the wrong GPU")
	}
}

// TestPluginRestartRestartsDaemonsWithTheirLimits: daemons die with the
// plugin's container; the next start brings every prepared claim's daemon
// back with the claim's limits, so that its containers' new CUDA contexts
// are limited as before.
func TestPluginRestartRestartsDaemonsWithTheirLimits(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	e := newTestEnv(t, "dgxh200", 1)
	p := e.mustPreparer(ctx)
	c := makeClaim("c").Share("s", "gpu-0-shared", "8Gi", "40", "x").Obj()
	if res := p.Prepare(ctx, c); res.Err != nil {
		t.Fatal(res.Err)
	}
	before, _ := e.mps.Get("c")
	e.mps.Kill("c") // the plugin's container went, and its daemons with it
	e.mustPreparer(ctx)
	after, ok := e.mps.Get("c")
	if alive, _ := e.mps.List(ctx); !ok || !alive["c"] {
		t.Fatalf("daemon of claim c not running after the restart: %v", alive)
	}
	if diff := cmp.Diff(before, after); diff != "" || after.PinnedMemoryLimitBytes != 8<<30 || after.ActiveThreadPercentage != 40 {
		t.Errorf("restarted daemon (-before +after):\n%s%+v", diff, after)
	}
}
