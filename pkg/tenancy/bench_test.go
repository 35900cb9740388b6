package tenancy_test

import (
	"fmt"
	"testing"

	resourceapi "k8s.io/api/resource/v1"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

const (
	benchTenants = 100
	benchClaims  = 10000
)

// benchFleet is 100 tenants with 100 admitted MIG claims each (10,000 claims).
func benchFleet() ([]*tenancyv1.GPUTenant, [][]*resourceapi.ResourceClaim, map[tenancy.DeviceID]int64) {
	memory := map[tenancy.DeviceID]int64{}
	tenants := make([]*tenancyv1.GPUTenant, benchTenants)
	claims := make([][]*resourceapi.ResourceClaim, benchTenants)
	for i := range benchTenants {
		name := fmt.Sprintf("team-%d", i)
		tenants[i] = makeTenant(name).Classes(gpuapi.ClassMIG, gpuapi.ClassShared).Memory("100Ti").Devices(gpuapi.ClassMIG, 1000).Obj()
		for j := range benchClaims / benchTenants {
			dev := fmt.Sprintf("gpu-%d-mig-1g18gb-%d", j/7, j%7)
			memory[tenancy.DeviceID{Driver: gpuapi.DriverName, Pool: "n1", Device: dev}] = 18 * gi
			c := makeClaim(name, fmt.Sprintf("c%d", j)).FirstAvailable("gpu", gpuapi.ClassMIG, gpuapi.ClassShared).
				Allocated("gpu/s0", dev).Condition(dev, tenancyv1.ConditionAdmitted).Obj()
			claims[i] = append(claims[i], c)
		}
	}
	return tenants, claims, memory
}

// BenchmarkClaimAdmission is the admission check of every one of 10,000
// claims against its tenant (the Go twin of the admission policy).
func BenchmarkClaimAdmission(b *testing.B) {
	tenants, claims, _ := benchFleet()
	b.ResetTimer()
	for b.Loop() {
		for i, t := range tenants {
			for _, c := range claims[i] {
				if v := tenancy.ClaimViolations(t, &c.Spec); len(v) > 0 {
					b.Fatal(v)
				}
			}
		}
	}
	b.ReportMetric(float64(benchClaims*b.N)/b.Elapsed().Seconds(), "decisions/s")
}

// BenchmarkBudgetDecision is the controller's budget decision for each of
// 10,000 claims, each recomputing its tenant's usage from the tenant's 100
// admitted claims, as the controller does on every decision.
func BenchmarkBudgetDecision(b *testing.B) {
	tenants, claims, memory := benchFleet()
	b.ResetTimer()
	for b.Loop() {
		for i, t := range tenants {
			for _, c := range claims[i] {
				held, err := tenancy.HeldBy(claims[i], memory)
				if err != nil {
					b.Fatal(err)
				}
				if d := tenancy.Decide(t, held, c, memory); !d.Admit {
					b.Fatal(d.Message)
				}
			}
		}
	}
	b.ReportMetric(float64(benchClaims*b.N)/b.Elapsed().Seconds(), "decisions/s")
}
