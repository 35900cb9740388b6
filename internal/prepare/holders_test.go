package prepare

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/klog/v2/ktesting"
)

// TestRefusesDevicesAnotherClaimHolds: a claim whose pod still runs may have
// been deleted (its finalizer stripped), and the scheduler then allocates its
// devices again. The second prepare must fail and name the holder, for the
// same device and for any device that overlaps it on the GPU, and the node
// must be left as the first claim made it; what does not overlap prepares.
func TestRefusesDevicesAnotherClaimHolds(t *testing.T) {
	tests := map[string]struct {
		holder  *resourceapi.ResourceClaim
		second  *resourceapi.ResourceClaim
		refused bool
	}{
		"the same whole GPU": {
			holder: makeClaim("a").Device("gpu", "gpu-0").Obj(), second: makeClaim("b").Device("gpu", "gpu-0").Obj(), refused: true,
		},
		"a partition of a held whole GPU": {
			holder: makeClaim("a").Device("gpu", "gpu-0").Obj(), second: makeClaim("b").Device("gpu", "gpu-0-mig-1g18gb-3").Obj(), refused: true,
		},
		"a share of a held whole GPU": {
			holder: makeClaim("a").Device("gpu", "gpu-0").Obj(), second: makeClaim("b").Share("s", "gpu-0-shared", "1Gi", "10", "s-b").Obj(), refused: true,
		},
		"the whole of a GPU with a held partition": {
			holder: makeClaim("a").Device("gpu", "gpu-0-mig-1g18gb-3").Obj(), second: makeClaim("b").Device("gpu", "gpu-0").Obj(), refused: true,
		},
		"the same partition": {
			holder: makeClaim("a").Device("gpu", "gpu-0-mig-3g71gb-4").Obj(), second: makeClaim("b").Device("gpu", "gpu-0-mig-3g71gb-4").Obj(), refused: true,
		},
		"a partition on the same memory slices": {
			holder: makeClaim("a").Device("gpu", "gpu-0-mig-3g71gb-4").Obj(), second: makeClaim("b").Device("gpu", "gpu-0-mig-1g18gb-5").Obj(), refused: true,
		},
		"a second +me partition (one media engine)": {
			holder: makeClaim("a").Device("gpu", "gpu-0-mig-1g18gb-me-6").Obj(), second: makeClaim("b").Device("gpu", "gpu-0-mig-1g18gb-me-0").Obj(), refused: true,
		},
		"shares past the GPU's memory": {
			holder: makeClaim("a").Share("s", "gpu-0-shared", "100Gi", "10", "s-a").Obj(), second: makeClaim("b").Share("s", "gpu-0-shared", "100Gi", "10", "s-b").Obj(), refused: true,
		},
		"shares past its compute": {
			holder: makeClaim("a").Share("s", "gpu-0-shared", "1Gi", "70", "s-a").Obj(), second: makeClaim("b").Share("s", "gpu-0-shared", "1Gi", "40", "s-b").Obj(), refused: true,
		},
		"shares that fit": {
			holder: makeClaim("a").Share("s", "gpu-0-shared", "20Gi", "30", "s-a").Obj(), second: makeClaim("b").Share("s", "gpu-0-shared", "30Gi", "60", "s-b").Obj(),
		},
		"partitions on other slices": {
			holder: makeClaim("a").Device("gpu", "gpu-0-mig-3g71gb-4").Obj(), second: makeClaim("b").Device("gpu", "gpu-0-mig-3g71gb-0").Obj(),
		},
		"another GPU": {
			holder: makeClaim("a").Device("gpu", "gpu-0").Obj(), second: makeClaim("b").Device("gpu", "gpu-1").Obj(),
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, ctx := ktesting.NewTestContext(t)
			e := newTestEnv(t, "dgxh200", 2)
			p := e.mustPreparer(ctx)
			if res := p.Prepare(ctx, tc.holder); res.Err != nil {
				t.Fatal(res.Err)
			}
			before := e.state()
			res := p.Prepare(ctx, tc.second)
			if !tc.refused {
				if res.Err != nil {
					t.Fatalf("prepare beside %s: %v", tc.holder.Name, res.Err)
				}
				return
			}
			if res.Err == nil || !strings.Contains(res.Err.Error(), "ns/claim-a (a)") {
				t.Fatalf("prepare of what claim a holds: %v, want a refusal naming ns/claim-a (a)", res.Err)
			}
			if diff := cmp.Diff(before, e.state(), cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("the refused prepare changed the node (-before +after):\n%s", diff)
			}
		})
	}
}
