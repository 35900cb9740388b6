package tenancy_test

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

const gib = int64(1) << 30

func TestBorrowed(t *testing.T) {
	tests := map[string]struct {
		guarantee *tenantWrapper
		used      tenancy.Usage
		want      tenancy.Usage
	}{
		"no guarantee: everything held is borrowed memory": {
			guarantee: makeTenant("a"),
			used:      tenancy.Usage{Memory: 160 * gib, Devices: map[string]int64{gpuapi.ClassGPU: 2}},
			want:      tenancy.Usage{Memory: 160 * gib, Devices: map[string]int64{}},
		},
		"within the guarantee": {
			guarantee: makeTenant("a").Guarantee("240Gi", map[string]int64{gpuapi.ClassGPU: 3}),
			used:      tenancy.Usage{Memory: 160 * gib, Devices: map[string]int64{gpuapi.ClassGPU: 2}},
			want:      tenancy.Usage{Devices: map[string]int64{}},
		},
		"above in memory and devices": {
			guarantee: makeTenant("a").Guarantee("240Gi", map[string]int64{gpuapi.ClassGPU: 3}),
			used:      tenancy.Usage{Memory: 480 * gib, Devices: map[string]int64{gpuapi.ClassGPU: 6}},
			want:      tenancy.Usage{Memory: 240 * gib, Devices: map[string]int64{gpuapi.ClassGPU: 3}},
		},
		"a class the guarantee does not name counts by its memory only": {
			guarantee: makeTenant("a").Guarantee("100Gi", map[string]int64{gpuapi.ClassGPU: 1}),
			used:      tenancy.Usage{Memory: 120 * gib, Devices: map[string]int64{gpuapi.ClassMIG: 7}},
			want:      tenancy.Usage{Memory: 20 * gib, Devices: map[string]int64{}},
		},
		"above in devices only": {
			guarantee: makeTenant("a").Guarantee("1Ti", map[string]int64{gpuapi.ClassMIG: 2}),
			used:      tenancy.Usage{Memory: 60 * gib, Devices: map[string]int64{gpuapi.ClassMIG: 3}},
			want:      tenancy.Usage{Devices: map[string]int64{gpuapi.ClassMIG: 1}},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got := tenancy.Borrowed(tc.guarantee.Obj(), tc.used)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Borrowed (-want +got):\n%s", diff)
			}
		})
	}
}

func TestBorrowingClaims(t *testing.T) {
	t0 := time.Date(2026, 12, 6, 1, 0, 0, 0, time.UTC)
	gpu := func(name, device string, admitted time.Duration) *resourceapi.ResourceClaim {
		return makeClaim("a", name).Request("gpu", gpuapi.ClassGPU).Allocated("gpu", device).AdmittedAt(t0.Add(admitted)).Obj()
	}
	memory := map[tenancy.DeviceID]int64{}
	for _, d := range []string{"gpu-0", "gpu-1", "gpu-2", "gpu-3"} {
		memory[tenancy.DeviceID{Driver: gpuapi.DriverName, Pool: "n1", Device: d}] = 80 * gib
	}
	claims := []*resourceapi.ResourceClaim{
		// Listed out of admission order: the rule goes by admission time.
		gpu("late", "gpu-3", 3*time.Minute),
		gpu("first", "gpu-0", 0),
		gpu("second", "gpu-1", time.Minute),
		gpu("third", "gpu-2", 2*time.Minute),
	}
	key := func(name string) types.NamespacedName { return types.NamespacedName{Namespace: "a", Name: name} }
	tests := map[string]struct {
		tenant *tenantWrapper
		want   map[types.NamespacedName]bool
	}{
		"no guarantee: every claim borrows": {
			tenant: makeTenant("a"),
			want:   map[types.NamespacedName]bool{key("first"): true, key("second"): true, key("third"): true, key("late"): true},
		},
		"guarantee of two GPUs by memory: the two latest borrow": {
			tenant: makeTenant("a").Guarantee("160Gi", nil),
			want:   map[types.NamespacedName]bool{key("third"): true, key("late"): true},
		},
		"guarantee of three GPUs by count, memory ample": {
			tenant: makeTenant("a").Guarantee("1Ti", map[string]int64{gpuapi.ClassGPU: 3}),
			want:   map[types.NamespacedName]bool{key("late"): true},
		},
		"guarantee covers everything": {
			tenant: makeTenant("a").Guarantee("320Gi", map[string]int64{gpuapi.ClassGPU: 4}),
			want:   map[types.NamespacedName]bool{},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got := tenancy.BorrowingClaims(tc.tenant.Obj(), claims, memory)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("BorrowingClaims (-want +got):\n%s", diff)
			}
		})
	}
}
