package prepare

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/klog/v2/ktesting"

	"github.com/tessera-gpu/tessera/internal/checkpoint"
)

// specOf returns the claim's CDI spec as written, "" when there is none.
func (e *testEnv) specOf(uid string) string {
	e.t.Helper()
	matches, err := filepath.Glob(filepath.Join(e.cdiRoot, "*"+uid+"*"))
	if err != nil || len(matches) != 1 {
		return ""
	}
	data, err := os.ReadFile(matches[0])
	if err != nil {
		e.t.Fatal(err)
	}
	return string(data)
}

// recordedMIG returns the checkpoint's record of a claim's first device.
func (e *testEnv) recordedMIG(uid string) checkpoint.MIG {
	e.t.Helper()
	store, _ := checkpoint.NewStore(e.stateDir)
	cp, err := store.Load()
	if err != nil {
		e.t.Fatal(err)
	}
	c, ok := cp.Claims[uid]
	if !ok || c.Devices[0].MIG == nil {
		e.t.Fatalf("no MIG record of claim %s", uid)
	}
	return *c.Devices[0].MIG
}

// TestPreparedMIGClaimSurvivesReboot: a reboot takes the MIG instance, MIG
// mode and the CDI directory (a tmpfs). Whether the plugin restarts or the
// kubelet only re-prepares, the claim's instance is re-created at its
// recorded placement, and its CDI spec names the new instance, under the
// same CDI IDs.
func TestPreparedMIGClaimSurvivesReboot(t *testing.T) {
	for _, restart := range []bool{true, false} {
		name := "re-prepare only"
		if restart {
			name = "plugin restarts"
		}
		t.Run(name, func(t *testing.T) {
			_, ctx := ktesting.NewTestContext(t)
			e := newTestEnv(t, "dgxh200", 2)
			p := e.mustPreparer(ctx)
			c := makeClaim("a").Device("m", "gpu-1-mig-3g71gb-4").Obj()
			first := p.Prepare(ctx, c)
			if first.Err != nil {
				t.Fatal(first.Err)
			}
			before := e.recordedMIG("a")

			e.server.Reboot()
			if err := os.RemoveAll(e.cdiRoot); err != nil {
				t.Fatal(err)
			}
			if restart {
				p = e.mustPreparer(ctx)
			}
			again := p.Prepare(ctx, c)
			if again.Err != nil {
				t.Fatalf("re-prepare after a reboot: %v", again.Err)
			}
			if diff := cmp.Diff(first, again); diff != "" {
				t.Errorf("re-prepared result (-first +again):\n%s", diff)
			}
			if got := e.state().MIG; !cmp.Equal(got, []string{"gpu1/4+4/ci=1"}) {
				t.Errorf("MIG instances after re-prepare = %v, want the claim's at 4+4", got)
			}
			after := e.recordedMIG("a")
			if after.UUID == "" || after.UUID == before.UUID {
				t.Errorf("recorded MIG UUID %q after the reboot, before %q: want the new instance's", after.UUID, before.UUID)
			}
			if spec := e.specOf("a"); !strings.Contains(spec, after.UUID) {
				t.Errorf("CDI spec does not name the re-created instance %s:\n%s", after.UUID, spec)
			}
		})
	}
}

// TestRePrepareChecksTheAllocation: a prepared claim asked for again with
// another allocation is refused, instead of handed its old devices.
func TestRePrepareChecksTheAllocation(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	e := newTestEnv(t, "dgxh200", 1)
	p := e.mustPreparer(ctx)
	if res := p.Prepare(ctx, makeClaim("a").Device("m", "gpu-0-mig-1g18gb-0").Obj()); res.Err != nil {
		t.Fatal(res.Err)
	}
	res := p.Prepare(ctx, makeClaim("a").Device("m", "gpu-0-mig-1g18gb-1").Obj())
	if res.Err == nil || !strings.Contains(res.Err.Error(), "allocated") {
		t.Errorf("re-prepare with another allocation: %v, want a refusal", res.Err)
	}
}

// TestDeviceIdentitySurvivesAMissingGPU: after a reboot in which GPU 1
// failed to probe, NVML indexes the GPU with minor 2 as 1. Its devices keep
// their names (gpu-2-…), its prepared partition is re-created on that
// physical GPU, and a claim on the missing GPU can be unprepared without
// touching the GPU that took its index.
func TestDeviceIdentitySurvivesAMissingGPU(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	e := newTestEnv(t, "dgxh200", 3)
	p := e.mustPreparer(ctx)
	onMinor2 := makeClaim("two").Device("m", "gpu-2-mig-1g18gb-5").Obj()
	first := p.Prepare(ctx, onMinor2)
	if first.Err != nil {
		t.Fatal(first.Err)
	}
	onMissing := makeClaim("one").Device("m", "gpu-1-mig-1g18gb-0").Obj()
	if res := p.Prepare(ctx, onMissing); res.Err != nil {
		t.Fatal(res.Err)
	}

	e.server.Reboot()
	e.server.SetMissing(1, true)
	p = e.mustPreparer(ctx)
	for name, want := range map[string]bool{"gpu-0": true, "gpu-1": false, "gpu-2": true, "gpu-2-mig-1g18gb-5": true} {
		if _, ok := p.device(name); ok != want {
			t.Errorf("device %s on the node: %v, want %v", name, ok, want)
		}
	}
	if got := e.server.GPU(2).Instances; len(got) != 1 || got[0].Start != 5 {
		t.Errorf("GPU with minor 2 after restart holds %+v, want the claim's partition at 5", got)
	}
	if got := e.server.GPU(1).Instances; len(got) != 0 {
		t.Errorf("missing GPU 1 holds %+v", got)
	}
	again := p.Prepare(ctx, onMinor2)
	if again.Err != nil {
		t.Fatalf("re-prepare of the claim on minor 2: %v", again.Err)
	}
	if diff := cmp.Diff(first, again); diff != "" {
		t.Errorf("re-prepared result (-first +again):\n%s", diff)
	}
	if res := p.Prepare(ctx, onMissing); res.Err == nil {
		t.Error("re-prepare of a claim on the missing GPU succeeded")
	}
	for _, c := range []*resourceapi.ResourceClaim{onMissing, onMinor2} {
		if err := p.Unprepare(ctx, ref(c)); err != nil {
			t.Errorf("unprepare %s: %v", c.Name, err)
		}
	}
	if st := e.state(); len(st.MIG) != 0 || len(st.Claims) != 0 {
		t.Errorf("after unprepare: MIG %v, claims %v", st.MIG, st.Claims)
	}
}
