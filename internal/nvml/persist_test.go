package nvml_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	gonvml "github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/google/go-cmp/cmp"

	tnvml "github.com/tessera-gpu/tessera/internal/nvml"
	"github.com/tessera-gpu/tessera/internal/nvml/nvmlmock"
)

// TestMockStateSurvivesRestart opens a mock with a state file, makes MIG
// instances, and opens the mock again as a restarted plugin would: the
// instances are there with the same IDs and UUIDs, a new instance gets an ID
// not used before, and a destroyed one stays destroyed.
func TestMockStateSurvivesRestart(t *testing.T) {
	ctx := context.Background()
	state := filepath.Join(t.TempDir(), "state", "mock-nvml.json")
	open := func() tnvml.Library {
		t.Helper()
		lib, err := tnvml.Open(tnvml.Backend{Mock: "dgxh200", Count: 2, Seed: "n1", StateFile: state})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = lib.Shutdown() })
		return lib
	}
	devices := func(lib tnvml.Library) []tnvml.MIGDevice {
		t.Helper()
		list, err := lib.MIGDevices(ctx, 1)
		if err != nil {
			t.Fatal(err)
		}
		return list
	}

	lib := open()
	if err := lib.SetMIGMode(ctx, 1, true); err != nil {
		t.Fatal(err)
	}
	a, err := lib.CreateMIGDevice(ctx, 1, gonvml.GPU_INSTANCE_PROFILE_1_SLICE, placement(6, 1))
	if err != nil {
		t.Fatal(err)
	}
	b, err := lib.CreateMIGDevice(ctx, 1, gonvml.GPU_INSTANCE_PROFILE_3_SLICE, placement(0, 4))
	if err != nil {
		t.Fatal(err)
	}
	if err := lib.DestroyMIGDevice(ctx, 1, a.GPUInstanceID); err != nil {
		t.Fatal(err)
	}
	c, err := lib.CreateMIGDevice(ctx, 1, gonvml.GPU_INSTANCE_PROFILE_1_SLICE, placement(5, 1))
	if err != nil {
		t.Fatal(err)
	}
	before := devices(lib)
	saved, err := nvmlmock.ReadState(state)
	if err != nil {
		t.Fatal(err)
	}
	want := nvmlmock.GPUState{MIGMode: 1, Instances: []nvmlmock.GPUInstance{
		{ProfileID: gonvml.GPU_INSTANCE_PROFILE_3_SLICE, Start: 0, Size: 4, ComputeInstances: 1},
		{ProfileID: gonvml.GPU_INSTANCE_PROFILE_1_SLICE, Start: 5, Size: 1, ComputeInstances: 1},
	}}
	if len(saved) != 2 || saved[0].MIGMode != 0 || len(saved[0].Instances) != 0 {
		t.Errorf("saved state %+v, want two GPUs, GPU 0 untouched", saved)
	} else if diff := cmp.Diff(want, saved[1]); diff != "" {
		t.Errorf("saved state of GPU 1 (-want +got):\n%s", diff)
	}

	restarted := open()
	if diff := cmp.Diff(before, devices(restarted)); diff != "" {
		t.Errorf("MIG devices after a restart (-before +after):\n%s", diff)
	}
	if _, err := restarted.CreateMIGDevice(ctx, 1, gonvml.GPU_INSTANCE_PROFILE_2_SLICE, placement(0, 2)); !tnvml.IsReturn(err, gonvml.ERROR_INSUFFICIENT_RESOURCES) {
		t.Errorf("create over a restored instance: err = %v, want INSUFFICIENT_RESOURCES", err)
	}
	d, err := restarted.CreateMIGDevice(ctx, 1, gonvml.GPU_INSTANCE_PROFILE_1_SLICE, placement(6, 1))
	if err != nil {
		t.Fatal(err)
	}
	for _, old := range []tnvml.MIGDevice{a, b, c} {
		if d.GPUInstanceID == old.GPUInstanceID {
			t.Errorf("new instance after a restart has GPU instance ID %d, already given to %+v", d.GPUInstanceID, old)
		}
	}
	for _, m := range []tnvml.MIGDevice{b, c, d} {
		if err := restarted.DestroyMIGDevice(ctx, 1, m.GPUInstanceID); err != nil {
			t.Fatal(err)
		}
	}
	if err := restarted.SetMIGMode(ctx, 1, false); err != nil {
		t.Fatal(err)
	}

	again := open()
	if got := devices(again); len(got) != 0 {
		t.Errorf("destroyed instances came back after a restart: %+v", got)
	}
	if _, err := again.CreateMIGDevice(ctx, 1, gonvml.GPU_INSTANCE_PROFILE_1_SLICE, placement(0, 1)); !tnvml.IsReturn(err, gonvml.ERROR_NOT_SUPPORTED) {
		t.Errorf("create after MIG was switched off before the restart: err = %v, want NOT_SUPPORTED", err)
	}
}

// TestMockStateRefusesAnotherMock: a state file of another GPU count, or one
// the hardware could not hold, is refused with the file's name.
func TestMockStateRefusesAnotherMock(t *testing.T) {
	dir := t.TempDir()
	two := filepath.Join(dir, "two.json")
	lib, err := tnvml.Open(tnvml.Backend{Mock: "dgxh200", Count: 2, StateFile: two})
	if err != nil {
		t.Fatal(err)
	}
	_ = lib.Shutdown()
	overlap := filepath.Join(dir, "overlap.json")
	bad := `{"version":1,"gpus":[{"migMode":1,"pendingMigMode":1,"nextGpuInstanceID":2,"instances":[` +
		`{"id":0,"profileID":2,"start":0,"size":4},{"id":1,"profileID":0,"start":3,"size":1}]}]}`
	if err := os.WriteFile(overlap, []byte(bad), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		file  string
		count int
		want  string
	}{
		"other GPU count":       {two, 1, "of 2 GPUs, the mock has 1"},
		"overlapping instances": {overlap, 1, "GPU instance 1 of profile 0 at 3+1"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := tnvml.Open(tnvml.Backend{Mock: "dgxh200", Count: tc.count, StateFile: tc.file})
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.file) {
				t.Errorf("open = %v, want an error naming %s and saying %q", err, tc.file, tc.want)
			}
		})
	}
}
