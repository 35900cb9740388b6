package nvml_test

import (
	"testing"

	gonvml "github.com/NVIDIA/go-nvml/pkg/nvml"
	"k8s.io/klog/v2/ktesting"

	tnvml "github.com/tessera-gpu/tessera/internal/nvml"
)

// TestDestroyInUse: while a process runs on an instance, NVML refuses to
// destroy it with IN_USE (the mock's FailDestroys); the instance stays, and
// a later destroy succeeds.
func TestDestroyInUse(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	s, lib := openMock(t, "dgxh200", 1)
	if err := lib.SetMIGMode(ctx, 0, true); err != nil {
		t.Fatal(err)
	}
	m, err := lib.CreateMIGDevice(ctx, 0, gonvml.GPU_INSTANCE_PROFILE_1_SLICE, placement(2, 1))
	if err != nil {
		t.Fatal(err)
	}
	s.FailDestroys(0, 1)
	if err := lib.DestroyMIGDevice(ctx, 0, m.GPUInstanceID); !tnvml.IsReturn(err, gonvml.ERROR_IN_USE) {
		t.Fatalf("destroy while in use: %v, want IN_USE", err)
	}
	if list, err := lib.MIGDevices(ctx, 0); err != nil || len(list) != 1 {
		t.Fatalf("instances after a refused destroy: %v, %v; want it kept", list, err)
	}
	if err := lib.DestroyMIGDevice(ctx, 0, m.GPUInstanceID); err != nil {
		t.Fatalf("destroy once free: %v", err)
	}
	if list, err := lib.MIGDevices(ctx, 0); err != nil || len(list) != 0 {
		t.Errorf("instances after the destroy: %v, %v", list, err)
	}
}
