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

func TestIsDedicatedClass(t *testing.T) {
	for class, want := range map[string]bool{
		"team-a.dedicated.gpu.tessera.dev":        true,
		"team-a.dedicated.mig.gpu.tessera.dev":    true,
		"team-a.dedicated.shared.gpu.tessera.dev": true,
		".dedicated.gpu.tessera.dev":              false,
		gpuapi.ClassGPU:                           false,
		gpuapi.ClassShared:                        false,
		"team-a.dedicated.nic.example.com":        false,
	} {
		if got := tenancy.IsDedicatedClass(class); got != want {
			t.Errorf("IsDedicatedClass(%q) = %v, want %v", class, got, want)
		}
	}
}

// TestOutsiderViolations: outside team-a's namespaces, a claim may name
// neither team-a's dedicated classes nor a toleration that may tolerate
// team-a's sharing taint; the messages never name team-a.
func TestOutsiderViolations(t *testing.T) {
	teamA := makeTenant("team-a").Pool("pool-a").Obj()
	tol := func(key string, op resourceapi.DeviceTolerationOperator, value string) resourceapi.DeviceToleration {
		return resourceapi.DeviceToleration{Key: key, Operator: op, Value: value, Effect: resourceapi.DeviceTaintEffectNoSchedule}
	}
	const (
		class     = "request gpu names DeviceClass team-a.dedicated.gpu.tessera.dev, which is dedicated to a GPUTenant that does not select the namespace"
		tolerates = "request gpu tolerates a tenancy taint that keeps the namespace off GPUs of another GPUTenant"
	)
	for name, tc := range map[string]struct {
		claim *claimWrapper
		want  []tenancy.Violation
	}{
		"a dedicated class": {
			claim: makeClaim("u", "c").Request("gpu", tenancyv1.DedicatedClassName("team-a", gpuapi.ClassGPU)),
			want:  []tenancy.Violation{{Request: "gpu", Message: class}},
		},
		"a dedicated class as an alternative": {
			claim: makeClaim("u", "c").FirstAvailable("gpu", gpuapi.ClassMIG, tenancyv1.DedicatedClassName("team-a", gpuapi.ClassMIG)),
			want:  []tenancy.Violation{{Request: "gpu/s1", Message: strings.NewReplacer("request gpu", "request gpu/s1", "team-a.dedicated.gpu", "team-a.dedicated.mig.gpu").Replace(class)}},
		},
		"another tenant's dedicated class is that tenant's to refuse": {
			claim: makeClaim("u", "c").Request("gpu", tenancyv1.DedicatedClassName("team-b", gpuapi.ClassGPU)),
		},
		"the shipped class": {claim: makeClaim("u", "c").Request("gpu", gpuapi.ClassGPU)},
		"the tenant's taint": {
			claim: makeClaim("u", "c").Request("gpu", gpuapi.ClassShared).Tolerate(tenancy.Toleration("team-a")),
			want:  []tenancy.Violation{{Request: "gpu", Message: tolerates}},
		},
		"the tenant's taint without a key": {
			claim: makeClaim("u", "c").Request("gpu", gpuapi.ClassShared).Tolerate(tol("", resourceapi.DeviceTolerationOpEqual, "team-a")),
			want:  []tenancy.Violation{{Request: "gpu", Message: tolerates}},
		},
		"every tenant's taint": {
			claim: makeClaim("u", "c").Request("gpu", gpuapi.ClassShared).Tolerate(tol(tenancyv1.TaintKeyTenant, resourceapi.DeviceTolerationOpExists, "")),
			want:  []tenancy.Violation{{Request: "gpu", Message: tolerates}},
		},
		"every taint": {
			claim: makeClaim("u", "c").Request("gpu", gpuapi.ClassShared).Tolerate(tol("", resourceapi.DeviceTolerationOpExists, "")),
			want:  []tenancy.Violation{{Request: "gpu", Message: tolerates}},
		},
		"the untenanted and free taints": {
			claim: makeClaim("u", "c").Request("gpu", gpuapi.ClassShared).Tolerate(tenancy.Toleration(tenancyv1.GroupUntenanted)).Tolerate(tenancy.Toleration(tenancyv1.GroupFree)),
		},
		"another key with the tenant's name": {
			claim: makeClaim("u", "c").Request("gpu", gpuapi.ClassShared).Tolerate(tol("example.com/team", resourceapi.DeviceTolerationOpEqual, "team-a")),
		},
	} {
		t.Run(name, func(t *testing.T) {
			got := tenancy.OutsiderViolations(teamA, &tc.claim.Obj().Spec)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("violations (-want +got):\n%s", diff)
			}
		})
	}
}

// TestDecideUntenanted: the controller admits a claim of a namespace of no
// tenant at once, unless it names a tenant's dedicated class or tolerates a
// tenancy taint that the untenanted sharing policy does not add.
func TestDecideUntenanted(t *testing.T) {
	for name, tc := range map[string]struct {
		claim *claimWrapper
		admit bool
	}{
		"the shipped class": {claim: makeClaim("u", "c").Request("gpu", gpuapi.ClassMIG).Allocated("gpu", "gpu-2-mig-3g71gb-4"), admit: true},
		"a dedicated class": {claim: makeClaim("u", "c").Request("gpu", tenancyv1.DedicatedClassName("team-a", gpuapi.ClassMIG)).Allocated("gpu", "gpu-2-mig-3g71gb-4")},
		"a dedicated alternative": {
			claim: makeClaim("u", "c").FirstAvailable("gpu", gpuapi.ClassShared, tenancyv1.DedicatedClassName("team-a", gpuapi.ClassGPU)).Allocated("gpu/s1", "gpu-0"),
		},
		"the untenanted policy's tolerations": {
			claim: makeClaim("u", "c").Request("gpu", gpuapi.ClassMIG).Tolerate(tenancy.Toleration(tenancyv1.GroupUntenanted)).Tolerate(tenancy.Toleration(tenancyv1.GroupFree)).Allocated("gpu", "gpu-2-mig-3g71gb-4"),
			admit: true,
		},
		"another group's taint": {
			claim: makeClaim("u", "c").Request("gpu", gpuapi.ClassMIG).Tolerate(tenancy.Toleration("team-a")).Allocated("gpu", "gpu-2-mig-3g71gb-4"),
		},
		"a taint without a key": {
			claim: makeClaim("u", "c").Request("gpu", gpuapi.ClassMIG).Tolerate(resourceapi.DeviceToleration{Value: "team-a"}).Allocated("gpu", "gpu-2-mig-3g71gb-4"),
		},
	} {
		t.Run(name, func(t *testing.T) {
			d := tenancy.Decide(nil, nil, tc.claim.Obj(), published)
			if d.Admit != tc.admit {
				t.Fatalf("Decide admits %v, want %v: %+v", d.Admit, tc.admit, d)
			}
			if !d.Admit && (d.Reason != tenancyv1.ReasonNotAllowed || !strings.Contains(d.Message, "belongs to no GPUTenant")) {
				t.Errorf("refusal %+v, want reason %s and a message that the namespace belongs to no tenant", d, tenancyv1.ReasonNotAllowed)
			}
		})
	}
}
