package tenancy_test

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	resourceapi "k8s.io/api/resource/v1"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

func TestClaimViolations(t *testing.T) {
	teamA := makeTenant("team-a").Classes(gpuapi.ClassShared, gpuapi.ClassMIG)
	const allowedList = "mig.gpu.tessera.dev, shared.gpu.tessera.dev"
	for name, tc := range map[string]struct {
		tenant *tenantWrapper
		claim  *claimWrapper
		want   []tenancy.Violation
	}{
		"allowed class": {
			tenant: teamA, claim: makeClaim("a", "c").Request("gpu", gpuapi.ClassMIG),
		},
		"class not allowed": {
			tenant: teamA, claim: makeClaim("a", "c").Request("gpu", gpuapi.ClassGPU),
			want: []tenancy.Violation{{Request: "gpu", Message: "GPUTenant team-a: request gpu names DeviceClass gpu.tessera.dev, which the tenant may not use (allowed: " + allowedList + ")"}},
		},
		"second request not allowed": {
			tenant: teamA, claim: makeClaim("a", "c").Request("ok", gpuapi.ClassMIG).Request("big", gpuapi.ClassGPU),
			want: []tenancy.Violation{{Request: "big", Message: "GPUTenant team-a: request big names DeviceClass gpu.tessera.dev, which the tenant may not use (allowed: " + allowedList + ")"}},
		},
		"firstAvailable alternative not allowed": {
			tenant: teamA, claim: makeClaim("a", "c").FirstAvailable("gpu", gpuapi.ClassShared, gpuapi.ClassGPU),
			want: []tenancy.Violation{{Request: "gpu/s1", Message: "GPUTenant team-a: request gpu/s1 names DeviceClass gpu.tessera.dev, which the tenant may not use (allowed: " + allowedList + ")"}},
		},
		"firstAvailable all allowed": {
			tenant: teamA, claim: makeClaim("a", "c").FirstAvailable("gpu", gpuapi.ClassMIG, gpuapi.ClassShared),
		},
		"admin access without the right": {
			tenant: teamA, claim: makeClaim("a", "c").Request("gpu", gpuapi.ClassMIG).AdminAccess(),
			want: []tenancy.Violation{{Request: "gpu", Message: "GPUTenant team-a: request gpu asks for admin access, which the tenant may not use"}},
		},
		"admin access with the right": {
			tenant: makeTenant("t").Classes(gpuapi.ClassMIG).AdminAccess(), claim: makeClaim("a", "c").Request("gpu", gpuapi.ClassMIG).AdminAccess(),
		},
		"Tessera config without the right": {
			tenant: teamA, claim: makeClaim("a", "c").Request("gpu", gpuapi.ClassMIG).Config(gpuapi.DriverName),
			want: []tenancy.Violation{{Message: "GPUTenant team-a: opaque config for gpu.tessera.dev is not allowed for the tenant"}},
		},
		"Tessera config with the right": {
			tenant: makeTenant("t").Classes(gpuapi.ClassMIG).DeviceConfig(), claim: makeClaim("a", "c").Request("gpu", gpuapi.ClassMIG).Config(gpuapi.DriverName),
		},
		"another driver's config": {
			tenant: teamA, claim: makeClaim("a", "c").Request("gpu", gpuapi.ClassMIG).Config("nic.example.com"),
		},
		"tolerates a tenancy taint": {
			tenant: teamA, claim: makeClaim("a", "c").Request("gpu", gpuapi.ClassShared).Toleration("tenancy.tessera.dev/tenant", resourceapi.DeviceTolerationOpExists),
			want: []tenancy.Violation{{Request: "gpu", Message: `GPUTenant team-a: request gpu tolerates the tenancy taint "tenancy.tessera.dev/tenant", which tenants may not do`}},
		},
		"tolerates every taint": {
			tenant: teamA, claim: makeClaim("a", "c").FirstAvailable("gpu", gpuapi.ClassShared).Toleration("", resourceapi.DeviceTolerationOpExists),
			want: []tenancy.Violation{{Request: "gpu/s0", Message: `GPUTenant team-a: request gpu/s0 tolerates the tenancy taint "*", which tenants may not do`}},
		},
		"tolerates another tenant's taint without a key": {
			// DRA matches a toleration without key to every key.
			tenant: teamA, claim: makeClaim("a", "c").Request("gpu", gpuapi.ClassShared).Tolerate(resourceapi.DeviceToleration{
				Operator: resourceapi.DeviceTolerationOpEqual, Value: "team-b", Effect: resourceapi.DeviceTaintEffectNoSchedule}),
			want: []tenancy.Violation{{Request: "gpu", Message: `GPUTenant team-a: request gpu tolerates the tenancy taint "*", which tenants may not do`}},
		},
		"tolerates its own group without a key": {
			tenant: teamA, claim: makeClaim("a", "c").Request("gpu", gpuapi.ClassShared).Tolerate(resourceapi.DeviceToleration{Value: "team-a"}),
			want: []tenancy.Violation{{Request: "gpu", Message: `GPUTenant team-a: request gpu tolerates the tenancy taint "*", which tenants may not do`}},
		},
		"tolerates the health taint": {
			tenant: teamA, claim: makeClaim("a", "c").Request("gpu", gpuapi.ClassShared).Toleration(gpuapi.TaintKeyUnhealthy, resourceapi.DeviceTolerationOpExists),
		},
		"own dedicated class": {
			tenant: makeTenant("team-a").Pool("pool-a"), claim: makeClaim("a", "c").Request("gpu", "team-a.dedicated.mig.gpu.tessera.dev"),
		},
		"another tenant's dedicated class": {
			tenant: makeTenant("team-b").Pool("pool-b"), claim: makeClaim("b", "c").Request("gpu", "team-a.dedicated.mig.gpu.tessera.dev"),
			want: []tenancy.Violation{{Request: "gpu", Message: "GPUTenant team-b: request gpu names DeviceClass team-a.dedicated.mig.gpu.tessera.dev, which the tenant may not use (allowed: team-b.dedicated.gpu.tessera.dev, team-b.dedicated.mig.gpu.tessera.dev, team-b.dedicated.shared.gpu.tessera.dev)"}},
		},
	} {
		t.Run(name, func(t *testing.T) {
			got := tenancy.ClaimViolations(tc.tenant.Obj(), &tc.claim.Obj().Spec)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("violations (-want +got):\n%s", diff)
			}
		})
	}
}
