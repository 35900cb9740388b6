package tenancy_test

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	resourceapi "k8s.io/api/resource/v1"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

// TestDecideShares: a share's admission is priced on top of what the tenant
// already holds, shares of one GPU together.
func TestDecideShares(t *testing.T) {
	share := func(name, device, memory string, compute int64) *claimWrapper {
		return makeClaim("a", name).Request("gpu", gpuapi.ClassShared).Share("gpu", device, memory, name).Compute(compute)
	}
	holdings := func(claims ...*claimWrapper) []tenancy.Holding {
		var out []tenancy.Holding
		for _, c := range claims {
			h, err := tenancy.ClaimHoldings(c.Obj(), published)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, h...)
		}
		return out
	}
	for name, tc := range map[string]struct {
		tenant      *tenantWrapper
		held        []tenancy.Holding
		claim       *claimWrapper
		wantAdmit   bool
		wantMemory  int64
		wantMessage string
	}{
		"a tiny share under Exclusive does not fit a 2Gi budget": {
			tenant: makeTenant("t").Classes(gpuapi.ClassShared).Memory("2Gi"),
			claim:  share("s1", "gpu-1-shared", "256Mi", 1), wantMemory: 140 * gi,
			wantMessage: "GPUTenant t is over budget: gpuMemory 0 in use + 140Gi requested > budget 2Gi (a share costs",
		},
		"a second share of a GPU the Exclusive tenant pays for costs nothing": {
			tenant: makeTenant("t").Classes(gpuapi.ClassShared).Memory("140Gi"),
			held:   holdings(share("s1", "gpu-1-shared", "1Gi", 1)),
			claim:  share("s2", "gpu-1-shared", "100Gi", 90), wantAdmit: true,
		},
		"a second share under Exclusive on another GPU costs that GPU": {
			tenant: makeTenant("t").Classes(gpuapi.ClassShared).Memory("200Gi"),
			held:   holdings(share("s1", "gpu-1-shared", "1Gi", 1)),
			claim:  share("s2", "gpu-3-shared", "1Gi", 1), wantMemory: 80 * gi,
			wantMessage: "GPUTenant t is over budget: gpuMemory 140Gi in use + 80Gi requested > budget 200Gi",
		},
		"a second share under Any adds its dominant fraction": {
			tenant: makeTenant("t").Classes(gpuapi.ClassShared).Sharing(tenancyv1.SharingAny).Memory("100Gi"),
			held:   holdings(share("s1", "gpu-1-shared", "28Gi", 10)),
			claim:  share("s2", "gpu-1-shared", "1Gi", 50), wantAdmit: true, wantMemory: 70 * gi,
		},
		"Any: over budget by the compute fraction": {
			tenant: makeTenant("t").Classes(gpuapi.ClassShared).Sharing(tenancyv1.SharingAny).Memory("90Gi"),
			held:   holdings(share("s1", "gpu-1-shared", "28Gi", 10)),
			claim:  share("s2", "gpu-1-shared", "1Gi", 50), wantMemory: 70 * gi,
			wantMessage: "GPUTenant t is over budget: gpuMemory 28Gi in use + 70Gi requested > budget 90Gi",
		},
	} {
		t.Run(name, func(t *testing.T) {
			d := tenancy.Decide(tc.tenant.Obj(), tc.held, tc.claim.Obj(), published)
			if d.Admit != tc.wantAdmit || d.Cost.Memory != tc.wantMemory || !strings.HasPrefix(d.Message, tc.wantMessage) {
				t.Errorf("Decide = admit %v, cost %d, %q; want admit %v, cost %d, %q...", d.Admit, d.Cost.Memory, d.Message, tc.wantAdmit, tc.wantMemory, tc.wantMessage)
			}
			if d.Cost.Devices[gpuapi.ClassShared] != 1 || len(d.Holdings) != 1 {
				t.Errorf("the claim's devices %v, holdings %v; want one share", d.Cost.Devices, d.Holdings)
			}
		})
	}
}

func TestRememberMemory(t *testing.T) {
	remembered := map[tenancy.DeviceID]int64{id("n1", "gpu-0"): 141, id("n1", "gpu-1-shared"): 141, id("n2", "gpu-0"): 80, id("n3", "gpu-0"): 141}
	// n1 restarts its kubelet (no slices); n2 publishes gpu-0 with new
	// memory; n3 was deleted.
	published := map[tenancy.DeviceID]int64{id("n2", "gpu-0"): 96, id("n2", "gpu-1"): 96}
	allocated := tenancy.AllocatedDevices([]*resourceapi.ResourceClaim{
		makeClaim("a", "c").Request("gpu", gpuapi.ClassGPU).Allocated("gpu", "gpu-0").Obj(),
		makeClaim("a", "d").Request("gpu", gpuapi.ClassGPU).Foreign("gpu", "nic.example.com", "gpu-1-shared").Obj(),
		makeClaim("a", "e").Request("gpu", gpuapi.ClassGPU).Obj(),
	})
	got := tenancy.RememberMemory(remembered, published, allocated)
	want := map[tenancy.DeviceID]int64{
		id("n1", "gpu-0"): 141, // unpublished, held: remembered
		id("n2", "gpu-0"): 96,  // published: what is published now
		id("n2", "gpu-1"): 96,
		// n1's gpu-1-shared (held only by another driver's device of that
		// name) and n3's gpu-0 (held by no one) are forgotten.
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("memory (-want +got):\n%s", diff)
	}
}
