package prepare

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/klog/v2/ktesting"
	"k8s.io/utils/ptr"
)

// withAdminAccess marks every allocation result of claim as allocated with
// DRA admin access, as the scheduler records a request's adminAccess.
func withAdminAccess(claim *resourceapi.ResourceClaim) *resourceapi.ResourceClaim {
	for i := range claim.Status.Allocation.Devices.Results {
		claim.Status.Allocation.Devices.Results[i].AdminAccess = ptr.To(true)
	}
	return claim
}

// TestAdminAccessMakesNothing: the scheduler allocates a device with admin
// access whatever else holds it and counts it for no one. A MIG instance or
// an MPS daemon made for it would take memory slices or compute that the
// scheduler then gives to other claims, so a MIG partition, a share, or a
// whole GPU whose config asks for sharing is refused with the node left
// clean; a whole GPU is prepared as it is, with nothing made.
func TestAdminAccessMakesNothing(t *testing.T) {
	for name, tc := range map[string]struct {
		claim   *resourceapi.ResourceClaim
		refused string
	}{
		"a MIG partition": {claim: makeClaim("a").Device("gpu", "gpu-0-mig-1g18gb-3").Obj(), refused: "admin access"},
		"a share":         {claim: makeClaim("a").Share("s", "gpu-0-shared", "10Gi", "50", "s-a").Obj(), refused: "admin access"},
		"a whole GPU with MPS from its class": {
			claim: makeClaim("a").Device("gpu", "gpu-0").Config(resourceapi.AllocationConfigSourceClass, mpsWhole).Obj(), refused: "sets up no sharing",
		},
		"a whole GPU": {claim: makeClaim("a").Device("gpu", "gpu-0").Obj()},
	} {
		t.Run(name, func(t *testing.T) {
			_, ctx := ktesting.NewTestContext(t)
			e := newTestEnv(t, "dgxh200", 2)
			p := e.mustPreparer(ctx)
			res := p.Prepare(ctx, withAdminAccess(tc.claim))
			if tc.refused != "" {
				if res.Err == nil || !strings.Contains(res.Err.Error(), tc.refused) {
					t.Fatalf("prepare: %v, want a refusal saying %q", res.Err, tc.refused)
				}
				if diff := cmp.Diff(e.cleanState(), e.state(), cmpopts.EquateEmpty()); diff != "" {
					t.Errorf("the refused prepare changed the node (-clean +got):\n%s", diff)
				}
				return
			}
			if res.Err != nil {
				t.Fatalf("prepare: %v", res.Err)
			}
			st := e.state()
			if len(st.MIG) != 0 || len(st.Daemons) != 0 || !cmp.Equal(st.MIGMode, e.cleanState().MIGMode) {
				t.Errorf("admin access to a whole GPU made MIG instances %v, daemons %v or MIG modes %v", st.MIG, st.Daemons, st.MIGMode)
			}
			prepared, release, err := p.PreparedDevices(ctx)
			if err != nil {
				t.Fatal(err)
			}
			release()
			if len(prepared) != 0 {
				t.Errorf("admin access blocks %v from publication; the scheduler counts it for no one", prepared)
			}
		})
	}
}

// TestAdminAccessHoldsNothing: a claim with admin access to a whole GPU is
// prepared beside the claim that holds that GPU, and holds nothing against
// the claims the scheduler allocates after it (a partition of that GPU).
func TestAdminAccessHoldsNothing(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	e := newTestEnv(t, "dgxh200", 2)
	p := e.mustPreparer(ctx)
	for _, c := range []*resourceapi.ResourceClaim{
		makeClaim("holder").Device("gpu", "gpu-1").Obj(),
		withAdminAccess(makeClaim("monitor-1").Device("gpu", "gpu-1").Obj()),
		withAdminAccess(makeClaim("monitor-0").Device("gpu", "gpu-0").Obj()),
		makeClaim("partition").Device("gpu", "gpu-0-mig-1g18gb-3").Obj(),
	} {
		if res := p.Prepare(ctx, c); res.Err != nil {
			t.Fatalf("prepare %s: %v", c.Name, res.Err)
		}
	}
}
