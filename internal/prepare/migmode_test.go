package prepare

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"k8s.io/klog/v2/ktesting"

	"github.com/tessera-gpu/tessera/internal/metrics"
	tnvml "github.com/tessera-gpu/tessera/internal/nvml"
	"github.com/tessera-gpu/tessera/internal/testing/builder"
	"github.com/tessera-gpu/tessera/pkg/inventory"
)

// metricValue returns a gauge's or counter's value; labels are "name=value".
func metricValue(t *testing.T, m *metrics.Metrics, name string, labels ...string) float64 {
	t.Helper()
	families, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, mt := range f.GetMetric() {
			var got []string
			for _, l := range mt.GetLabel() {
				got = append(got, l.GetName()+"="+l.GetValue())
			}
			if !cmp.Equal(got, labels, cmpopts.EquateEmpty()) {
				continue
			}
			if g := mt.GetGauge(); g != nil {
				return g.GetValue()
			}
			return mt.GetCounter().GetValue()
		}
	}
	return 0
}

// TestMIGModeChangedOnlyWhenItDiffers: the first partition switches MIG
// mode on; later ones, on a GPU that is busy with the first, ask for no
// change (a busy GPU refuses even a change to the mode it is in).
func TestMIGModeChangedOnlyWhenItDiffers(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	e := newTestEnv(t, "dgxh200", 1)
	p := e.mustPreparer(ctx)
	if res := p.Prepare(ctx, makeClaim("a").Device("m", "gpu-0-mig-1g18gb-0").Obj()); res.Err != nil {
		t.Fatal(res.Err)
	}
	e.server.SetBusy(0, true) // the first partition's container runs
	if res := p.Prepare(ctx, makeClaim("b").Device("m", "gpu-0-mig-1g18gb-1").Obj()); res.Err != nil {
		t.Fatalf("second partition on a busy GPU: %v", res.Err)
	}
	if n := e.server.MIGModeSets(0); n != 1 {
		t.Errorf("%d MIG mode changes for two partitions, want 1", n)
	}
}

// failingCreate fails every MIG creation, as NVML may (e.g. INSUFFICIENT_RESOURCES).
type failingCreate struct{ tnvml.Library }

var errCreate = errors.New("create refused")

func (failingCreate) CreateMIGDevice(context.Context, int, int, inventory.Placement) (tnvml.MIGDevice, error) {
	return tnvml.MIGDevice{}, errCreate
}

// TestFailedCreateTurnsMIGModeBackOff: a create that turned MIG mode on and
// then failed turns it back off, so that the GPU can be used whole.
func TestFailedCreateTurnsMIGModeBackOff(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	e := newTestEnv(t, "dgxh200", 1)
	p := e.mustPreparer(ctx, withNVML(failingCreate{e.lib}))
	if res := p.Prepare(ctx, makeClaim("a").Device("m", "gpu-0-mig-1g18gb-0").Obj()); !errors.Is(res.Err, errCreate) {
		t.Fatalf("prepare with a failing create: %v", res.Err)
	}
	if diff := cmp.Diff(e.cleanState(), e.state(), cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("node after a failed create (-want +got):\n%s", diff)
	}
}

// TestWholeAndSharedNeverInMIGMode: a GPU left in MIG mode with no
// partition is switched off before it is handed out whole or shared; where
// it cannot be, the prepare fails with the reason instead of handing CUDA a
// GPU it cannot see.
func TestWholeAndSharedNeverInMIGMode(t *testing.T) {
	for _, dev := range []string{"gpu-0", "gpu-0-shared"} {
		t.Run(dev, func(t *testing.T) {
			_, ctx := ktesting.NewTestContext(t)
			e := newTestEnv(t, "dgxh200", 1)
			p := e.mustPreparer(ctx)
			claim := func(uid string) *builder.ClaimBuilder {
				if dev == "gpu-0" {
					return makeClaim(uid).Device("g", dev)
				}
				return makeClaim(uid).Share("s", dev, "1Gi", "10", uid)
			}
			if err := e.lib.SetMIGMode(ctx, 0, true); err != nil {
				t.Fatal(err)
			}
			e.server.SetBusy(0, true)
			res := p.Prepare(ctx, claim("busy").Obj())
			if res.Err == nil || !strings.Contains(res.Err.Error(), "MIG mode") {
				t.Errorf("prepare on a busy GPU in MIG mode: %v, want a refusal naming MIG mode", res.Err)
			}
			e.server.SetBusy(0, false)
			if res := p.Prepare(ctx, claim("idle").Obj()); res.Err != nil {
				t.Fatalf("prepare on an idle GPU left in MIG mode: %v", res.Err)
			}
			if mode := e.server.GPU(0).MIGMode; mode != 0 {
				t.Errorf("GPU handed out %s with MIG mode %d", dev, mode)
			}
		})
	}
}

// TestMIGModeOffFailureNeverFailsUnprepare: a GPU kept busy (a monitoring
// client) refuses MIG-off; the unprepare completes, the failure shows in a
// metric, and the background retry switches it off once the GPU is idle.
func TestMIGModeOffFailureNeverFailsUnprepare(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	e := newTestEnv(t, "dgxh200", 1)
	m := metrics.New()
	p := e.mustPreparer(ctx, WithMetrics(m))
	c := makeClaim("a").Device("m", "gpu-0-mig-1g18gb-0").Obj()
	if res := p.Prepare(ctx, c); res.Err != nil {
		t.Fatal(res.Err)
	}
	e.server.SetBusy(0, true)
	if err := p.Unprepare(ctx, ref(c)); err != nil {
		t.Fatalf("unprepare on a busy GPU: %v", err)
	}
	if st := e.state(); len(st.Claims) != 0 || len(st.MIG) != 0 || st.MIGMode[0] != 1 {
		t.Errorf("after unprepare: claims %v, MIG %v, mode %d; want none, none, still on", st.Claims, st.MIG, st.MIGMode[0])
	}
	if v := metricValue(t, m, "tessera_mig_mode_off_pending"); v != 1 {
		t.Errorf("tessera_mig_mode_off_pending = %v, want 1", v)
	}
	if left := p.RetryMIGModeOff(ctx); !cmp.Equal(left, []int{0}) {
		t.Errorf("retry on a still busy GPU left %v, want [0]", left)
	}
	if v := metricValue(t, m, "tessera_mig_mode_off_failures_total"); v != 2 {
		t.Errorf("tessera_mig_mode_off_failures_total = %v, want 2", v)
	}
	e.server.SetBusy(0, false)
	if left := p.RetryMIGModeOff(ctx); len(left) != 0 {
		t.Errorf("retry on an idle GPU left %v", left)
	}
	if diff := cmp.Diff(e.cleanState(), e.state(), cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("node after the retry (-want +got):\n%s", diff)
	}
	if v := metricValue(t, m, "tessera_mig_mode_off_pending"); v != 0 {
		t.Errorf("tessera_mig_mode_off_pending = %v, want 0", v)
	}
}

// TestResetRequiredGPUModeIsNeverChangedAgain: a Hopper GPU passed through
// to a VM needs a reset for a MIG mode change
// (kubernetes-sigs/dra-driver-nvidia-gpu#883). The first MIG prepare fails
// and leaves the mode as it was; no later prepare changes that GPU's mode
// again; the GPU is still handed out whole; a metric shows it.
func TestResetRequiredGPUModeIsNeverChangedAgain(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	e := newTestEnv(t, "dgxh200", 2)
	m := metrics.New()
	p := e.mustPreparer(ctx, WithMetrics(m))
	e.server.SetResetRequired(0, true)
	if res := p.Prepare(ctx, makeClaim("a").Device("m", "gpu-0-mig-1g18gb-0").Obj()); !errors.Is(res.Err, tnvml.ErrResetRequired) {
		t.Fatalf("MIG prepare on a GPU needing a reset: %v, want ErrResetRequired", res.Err)
	}
	changes := e.server.MIGModeSets(0)
	if res := p.Prepare(ctx, makeClaim("b").Device("m", "gpu-0-mig-2g35gb-2").Obj()); res.Err == nil {
		t.Error("a second MIG prepare on the GPU succeeded")
	}
	whole := makeClaim("w").Device("g", "gpu-0").Obj()
	if res := p.Prepare(ctx, whole); res.Err != nil {
		t.Errorf("whole GPU: %v", res.Err)
	}
	if err := p.Unprepare(ctx, ref(whole)); err != nil {
		t.Error(err)
	}
	if n := e.server.MIGModeSets(0); n != changes {
		t.Errorf("GPU 0's MIG mode was changed %d more times after a change needed a reset", n-changes)
	}
	if st := e.state(); st.MIGMode[0] != 0 || e.server.PendingMIGMode(0) != 0 {
		t.Errorf("GPU 0 MIG mode %d, pending %d; want off, nothing pending", st.MIGMode[0], e.server.PendingMIGMode(0))
	}
	if v := metricValue(t, m, "tessera_mig_mode_reset_required", "gpu=0"); v != 1 {
		t.Errorf("tessera_mig_mode_reset_required{gpu=0} = %v, want 1", v)
	}
	if res := p.Prepare(ctx, makeClaim("other").Device("m", "gpu-1-mig-1g18gb-0").Obj()); res.Err != nil {
		t.Errorf("MIG on the other GPU: %v", res.Err)
	}
}

// TestUnprepareAfterReboot: a reboot took the claim's MIG instance and, on
// Hopper, MIG mode; NVML then answers NOT_SUPPORTED to instance queries.
// Unprepare completes.
func TestUnprepareAfterReboot(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	e := newTestEnv(t, "dgxh200", 1)
	p := e.mustPreparer(ctx)
	c := makeClaim("a").Device("m", "gpu-0-mig-3g71gb-0").Obj()
	if res := p.Prepare(ctx, c); res.Err != nil {
		t.Fatal(res.Err)
	}
	e.server.Reboot()
	if err := p.Unprepare(ctx, ref(c)); err != nil {
		t.Fatalf("unprepare after a reboot: %v", err)
	}
	if diff := cmp.Diff(e.cleanState(), e.state(), cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("node (-want +got):\n%s", diff)
	}
}
