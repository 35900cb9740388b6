package tenancy_test

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

func TestFleetCapacity(t *testing.T) {
	id := func(pool, device string) tenancy.DeviceID {
		return tenancy.DeviceID{Driver: gpuapi.DriverName, Pool: pool, Device: device}
	}
	memory := map[tenancy.DeviceID]int64{
		// n1: one H100 published whole, shared and cut: counted once.
		id("n1", "gpu-0"): 80 * gib, id("n1", "gpu-0-shared"): 80 * gib, id("n1", "gpu-0-mig-1g10gb-0"): 10 * gib, id("n1", "gpu-0-mig-7g80gb-0"): 80 * gib,
		// n1: a second GPU with MIG only, counted by its largest partition.
		id("n1", "gpu-1-mig-7g80gb-0"): 80 * gib, id("n1", "gpu-1-mig-3g40gb-4"): 40 * gib,
		// n2: gpu-0 is another node's GPU.
		id("n2", "gpu-0"): 141 * gib,
		// Another driver's device is not Tessera's fleet.
		{Driver: "other.example.com", Pool: "n1", Device: "gpu-7"}: 1 << 40,
	}
	want := tenancy.Usage{Memory: (80 + 80 + 141) * gib, Devices: map[string]int64{gpuapi.ClassGPU: 2}}
	if diff := cmp.Diff(want, tenancy.FleetCapacity(memory)); diff != "" {
		t.Errorf("FleetCapacity (-want +got):\n%s", diff)
	}
}

func TestGuaranteeOverCommitment(t *testing.T) {
	fleet := tenancy.Usage{Memory: 640 * gib, Devices: map[string]int64{gpuapi.ClassGPU: 8}}
	tests := map[string]struct {
		tenants []*tenancyv1.GPUTenant
		want    string
	}{
		"exactly the fleet": {
			tenants: []*tenancyv1.GPUTenant{
				makeTenant("a").Guarantee("240Gi", map[string]int64{gpuapi.ClassGPU: 3}).Obj(),
				makeTenant("b").Guarantee("400Gi", map[string]int64{gpuapi.ClassGPU: 5}).Obj(),
				makeTenant("c").Obj(),
			},
		},
		"memory over": {
			tenants: []*tenancyv1.GPUTenant{
				makeTenant("a").Guarantee("240Gi", nil).Obj(),
				makeTenant("b").Guarantee("401Gi", nil).Obj(),
			},
			want: "the guarantees of all GPUTenants add up to more than the fleet holds: gpuMemory guaranteed 641Gi > published 640Gi",
		},
		"whole GPUs over, memory within": {
			tenants: []*tenancyv1.GPUTenant{
				makeTenant("a").Guarantee("80Gi", map[string]int64{gpuapi.ClassGPU: 5}).Obj(),
				makeTenant("b").Guarantee("80Gi", map[string]int64{gpuapi.ClassGPU: 4, gpuapi.ClassMIG: 50}).Obj(),
			},
			want: "the guarantees of all GPUTenants add up to more than the fleet holds: gpu.tessera.dev devices guaranteed 9 > published 8",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, tenancy.GuaranteeOverCommitment(tc.tenants, fleet)); diff != "" {
				t.Errorf("GuaranteeOverCommitment (-want +got):\n%s", diff)
			}
		})
	}
}
