package nvmlmock

import (
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/google/go-cmp/cmp"
)

func TestInspectAndSetUp(t *testing.T) {
	s, err := New("dgxh200", 2, t.Name())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.ProfileID("9g.1tb"); err == nil {
		t.Error("ProfileID accepted a profile the H200 does not have")
	}
	p2g, err := s.ProfileID("2g.35gb")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.CreateGPUInstance(1, p2g, 2, 2); err == nil {
		t.Error("CreateGPUInstance succeeded on a GPU with MIG off")
	}
	if got := s.GPU(1); got.MIGMode != 0 || len(got.Instances) != 0 {
		t.Fatalf("fresh GPU 1 = %+v, want MIG off and empty", got)
	}

	if ret, activation := s.Devices[1].SetMigMode(nvml.DEVICE_MIG_ENABLE); ret != nvml.SUCCESS || activation != nvml.SUCCESS {
		t.Fatalf("switch MIG on: %v %v", ret, activation)
	}
	if err := s.CreateGPUInstance(1, p2g, 4, 2); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateGPUInstance(1, p2g, 2, 2); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateGPUInstance(1, p2g, 3, 2); err == nil {
		t.Error("CreateGPUInstance accepted a placement the 2g profile does not have")
	}
	want := GPUState{MIGMode: 1, Instances: []GPUInstance{
		{ProfileID: p2g, Start: 2, Size: 2},
		{ProfileID: p2g, Start: 4, Size: 2},
	}}
	if diff := cmp.Diff(want, s.GPU(1)); diff != "" {
		t.Errorf("GPU 1 (-want +got):\n%s", diff)
	}
	if got := s.GPU(0); got.MIGMode != 0 || len(got.Instances) != 0 {
		t.Errorf("GPU 0 changed with GPU 1: %+v", got)
	}
}
