package nvml_test

import (
	"errors"
	"testing"
	"time"

	gonvml "github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
	"github.com/google/go-cmp/cmp"
	"k8s.io/klog/v2/ktesting"

	tnvml "github.com/tessera-gpu/tessera/internal/nvml"
	"github.com/tessera-gpu/tessera/internal/nvml/migprofile"
	"github.com/tessera-gpu/tessera/pkg/inventory"
)

// profileNames returns a GPU's profile names by ID.
func profileNames(gpu inventory.GPU) map[int]string {
	out := map[int]string{}
	for _, p := range gpu.MIG.Profiles {
		out[p.ID] = p.Name
	}
	return out
}

// TestDiscoverNamesProfilesInEitherMIGMode: with MIG off, NVML's versioned
// profile-info call is NOT_SUPPORTED (nvml.h); the GPU is still discovered
// with every profile, named from Tessera's table, and the names do not
// change when MIG mode is switched on and NVML's own names are read.
func TestDiscoverNamesProfilesInEitherMIGMode(t *testing.T) {
	for _, model := range []string{"dgxh100", "dgxh200", "dgxb200"} {
		t.Run(model, func(t *testing.T) {
			_, ctx := ktesting.NewTestContext(t)
			s, lib := openMock(t, model, 2)
			want, ok := migprofile.Names(s.Model.GPU.Name)
			if !ok {
				t.Fatalf("no table entry for %q", s.Model.GPU.Name)
			}
			off, err := lib.Discover(ctx)
			if err != nil {
				t.Fatalf("discover with MIG off: %v", err)
			}
			if len(off.GPUs) != 2 || off.GPUs[0].MIG.Enabled {
				t.Fatalf("discovered %d GPUs (MIG %+v), want 2 with MIG off", len(off.GPUs), off.GPUs[0].MIG)
			}
			if diff := cmp.Diff(want, profileNames(off.GPUs[0])); diff != "" {
				t.Errorf("profiles with MIG off (-table +discovered):\n%s", diff)
			}
			if err := lib.SetMIGMode(ctx, 0, true); err != nil {
				t.Fatal(err)
			}
			on, err := lib.Discover(ctx)
			if err != nil {
				t.Fatalf("discover with MIG on: %v", err)
			}
			if !on.GPUs[0].MIG.Enabled {
				t.Fatal("MIG mode did not switch on")
			}
			if diff := cmp.Diff(profileNames(off.GPUs[0]), profileNames(on.GPUs[0])); diff != "" {
				t.Errorf("profile names changed with MIG mode (-off +on):\n%s", diff)
			}
		})
	}
}

// TestDiscoverWithoutMemoryInfo: nvml.h allows NOT_SUPPORTED from both
// memory-info calls; the GPU stays on the node with the full profile's
// memory, and the other GPUs are as before.
func TestDiscoverWithoutMemoryInfo(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	s, lib := openMock(t, "dgxh200", 2)
	s.SetMemoryInfoSupported(1, false)
	node, err := lib.Discover(ctx)
	if err != nil {
		t.Fatalf("discover: %v", err)
	}
	if len(node.GPUs) != 2 {
		t.Fatalf("discovered %d GPUs, want 2", len(node.GPUs))
	}
	if got, want := node.GPUs[0].MemoryBytes, uint64(144384<<20); got != want {
		t.Errorf("GPU 0 memory = %d, want %d", got, want)
	}
	full := s.Model.GPU.MIGProfiles.GpuInstanceProfiles[gonvml.GPU_INSTANCE_PROFILE_7_SLICE].MemorySizeMB << 20
	if got := node.GPUs[1].MemoryBytes; got != full {
		t.Errorf("GPU 1 without memory info: memory = %d, want the 7g profile's %d", got, full)
	}
}

// TestMIGQueriesWithMIGOffAndZeroInstanceProfiles: instance queries are
// NOT_SUPPORTED while MIG is off (a Hopper GPU after a reboot), and go-nvml
// refuses to list a profile with no instances; listing and destroying
// instances must still work.
func TestMIGQueriesWithMIGOffAndZeroInstanceProfiles(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	s, lib := openMock(t, "dgxh200", 1)
	if list, err := lib.MIGDevices(ctx, 0); err != nil || len(list) != 0 {
		t.Errorf("MIGDevices with MIG off = %v, %v; want none", list, err)
	}
	if err := lib.SetMIGMode(ctx, 0, true); err != nil {
		t.Fatal(err)
	}
	m, err := lib.CreateMIGDevice(ctx, 0, gonvml.GPU_INSTANCE_PROFILE_1_SLICE, placement(0, 1))
	if err != nil {
		t.Fatal(err)
	}
	list, err := lib.MIGDevices(ctx, 0)
	if err != nil || len(list) != 1 {
		t.Fatalf("MIGDevices with MIG on and a zero-instance profile = %v, %v; want the one instance", list, err)
	}
	s.Reboot()
	if list, err := lib.MIGDevices(ctx, 0); err != nil || len(list) != 0 {
		t.Errorf("MIGDevices after a reboot = %v, %v; want none", list, err)
	}
	if err := lib.DestroyMIGDevice(ctx, 0, m.GPUInstanceID); err != nil {
		t.Errorf("destroy an instance a reboot took: %v", err)
	}
}

// TestSetMIGModeOnlyWhenItDiffers: asking for the mode a GPU is in calls
// no NVML mode change, which a busy GPU would refuse.
func TestSetMIGModeOnlyWhenItDiffers(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	s, lib := openMock(t, "dgxh200", 1)
	if err := lib.SetMIGMode(ctx, 0, false); err != nil {
		t.Fatal(err)
	}
	if err := lib.SetMIGMode(ctx, 0, true); err != nil {
		t.Fatal(err)
	}
	s.SetBusy(0, true)
	if err := lib.SetMIGMode(ctx, 0, true); err != nil {
		t.Errorf("MIG on when on, on a busy GPU: %v", err)
	}
	if n := s.MIGModeSets(0); n != 1 {
		t.Errorf("%d NVML mode changes, want 1", n)
	}
}

// TestSetMIGModeInUse: a busy GPU reports IN_USE in the activation status
// (nvml.h); the change fails as IN_USE, the mode stays as it was with no
// change pending, and it can be retried once the GPU is idle.
func TestSetMIGModeInUse(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	s, lib := openMock(t, "dgxh200", 1)
	s.SetBusy(0, true)
	err := lib.SetMIGMode(ctx, 0, true)
	if !tnvml.IsReturn(err, gonvml.ERROR_IN_USE) || errors.Is(err, tnvml.ErrResetRequired) {
		t.Fatalf("MIG on, busy GPU: %v; want IN_USE", err)
	}
	if mode, err := lib.MIGMode(ctx, 0); err != nil || mode != (tnvml.MIGMode{}) {
		t.Errorf("mode after a busy change = %+v, %v; want off, nothing pending", mode, err)
	}
	s.SetBusy(0, false)
	if err := lib.SetMIGMode(ctx, 0, true); err != nil {
		t.Errorf("retry once idle: %v", err)
	}
}

// TestSetMIGModeNeedingResetIsNeverRetried: a change that needs a reset
// (a Hopper GPU passed through to a VM, kubernetes-sigs/dra-driver-nvidia-gpu#883;
// any A100) is undone, the GPU is never asked to change mode again, and it
// is discovered as keeping its mode.
func TestSetMIGModeNeedingResetIsNeverRetried(t *testing.T) {
	tests := map[string]struct {
		model string
		setup func(s interface{ SetResetRequired(int, bool) })
		want  bool // the mode asked for
	}{
		"hopper in a VM": {model: "dgxh200", setup: func(s interface{ SetResetRequired(int, bool) }) { s.SetResetRequired(0, true) }, want: true},
		"a100":           {model: "dgxa100", setup: func(interface{ SetResetRequired(int, bool) }) {}, want: false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, ctx := ktesting.NewTestContext(t)
			s, lib := openMock(t, tc.model, 1)
			tc.setup(s)
			before, err := lib.MIGMode(ctx, 0)
			if err != nil {
				t.Fatal(err)
			}
			if err := lib.SetMIGMode(ctx, 0, tc.want); !errors.Is(err, tnvml.ErrResetRequired) {
				t.Fatalf("change needing a reset: %v, want ErrResetRequired", err)
			}
			if after, err := lib.MIGMode(ctx, 0); err != nil || after != before {
				t.Errorf("mode after the refused change = %+v, %v; want %+v (nothing pending)", after, err, before)
			}
			calls := s.MIGModeSets(0)
			for range 3 {
				if err := lib.SetMIGMode(ctx, 0, tc.want); !errors.Is(err, tnvml.ErrResetRequired) {
					t.Errorf("later change: %v, want ErrResetRequired", err)
				}
			}
			if n := s.MIGModeSets(0); n != calls {
				t.Errorf("GPU was asked to change MIG mode %d more times after a change needed a reset", n-calls)
			}
			node, err := lib.Discover(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if node.GPUs[0].MIG.ToggleWithoutReset {
				t.Error("GPU still discovered as switching MIG mode without a reset")
			}
		})
	}
}

// TestCreateMIGDeviceReturnsCleanupErrors: when reading the new GPU
// instance fails and so does destroying it, both errors are returned: the
// instance left behind must be known.
func TestCreateMIGDeviceReturnsCleanupErrors(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	s, lib := openMock(t, "dgxh200", 1)
	if err := lib.SetMIGMode(ctx, 0, true); err != nil {
		t.Fatal(err)
	}
	dev := s.Devices[0].(*server.Device)
	create := dev.CreateGpuInstanceWithPlacementFunc
	dev.CreateGpuInstanceWithPlacementFunc = func(info *gonvml.GpuInstanceProfileInfo, p *gonvml.GpuInstancePlacement) (gonvml.GpuInstance, gonvml.Return) {
		gi, ret := create(info, p)
		if ret == gonvml.SUCCESS {
			g := gi.(*server.GpuInstance)
			g.GetInfoFunc = func() (gonvml.GpuInstanceInfo, gonvml.Return) { return gonvml.GpuInstanceInfo{}, gonvml.ERROR_UNKNOWN }
			g.DestroyFunc = func() gonvml.Return { return gonvml.ERROR_IN_USE }
		}
		return gi, ret
	}
	_, err := lib.CreateMIGDevice(ctx, 0, gonvml.GPU_INSTANCE_PROFILE_1_SLICE, placement(0, 1))
	if !tnvml.IsReturn(err, gonvml.ERROR_UNKNOWN) {
		t.Errorf("err = %v, want the GPU instance info's UNKNOWN", err)
	}
	if !containsReturn(err, gonvml.ERROR_IN_USE) {
		t.Errorf("err = %v, want it to carry the failed destroy's IN_USE too", err)
	}
}

func containsReturn(err error, ret gonvml.Return) bool {
	for _, e := range unwrapAll(err) {
		var ne *tnvml.Error
		if errors.As(e, &ne) && ne.Return == ret {
			return true
		}
	}
	return false
}

// unwrapAll flattens an error tree.
func unwrapAll(err error) []error {
	if err == nil {
		return nil
	}
	out := []error{err}
	switch u := err.(type) { //nolint:errorlint // walks the error tree itself, wrapper by wrapper
	case interface{ Unwrap() []error }:
		for _, e := range u.Unwrap() {
			out = append(out, unwrapAll(e)...)
		}
	case interface{ Unwrap() error }:
		out = append(out, unwrapAll(u.Unwrap())...)
	}
	return out
}

// TestCreateMIGDeviceFailsOnComputeInstanceInfo: an NVML error reading the
// new compute instance is returned, not dropped, and both new instances
// are destroyed.
func TestCreateMIGDeviceFailsOnComputeInstanceInfo(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	s, lib := openMock(t, "dgxh200", 1)
	if err := lib.SetMIGMode(ctx, 0, true); err != nil {
		t.Fatal(err)
	}
	dev := s.Devices[0].(*server.Device)
	create := dev.CreateGpuInstanceWithPlacementFunc
	dev.CreateGpuInstanceWithPlacementFunc = func(info *gonvml.GpuInstanceProfileInfo, p *gonvml.GpuInstancePlacement) (gonvml.GpuInstance, gonvml.Return) {
		gi, ret := create(info, p)
		if ret == gonvml.SUCCESS {
			g := gi.(*server.GpuInstance)
			createCI := g.CreateComputeInstanceFunc
			g.CreateComputeInstanceFunc = func(info *gonvml.ComputeInstanceProfileInfo) (gonvml.ComputeInstance, gonvml.Return) {
				ci, ret := createCI(info)
				if ret == gonvml.SUCCESS {
					ci.(*server.ComputeInstance).GetInfoFunc = func() (gonvml.ComputeInstanceInfo, gonvml.Return) {
						return gonvml.ComputeInstanceInfo{}, gonvml.ERROR_UNKNOWN
					}
				}
				return ci, ret
			}
		}
		return gi, ret
	}
	if _, err := lib.CreateMIGDevice(ctx, 0, gonvml.GPU_INSTANCE_PROFILE_1_SLICE, placement(0, 1)); !tnvml.IsReturn(err, gonvml.ERROR_UNKNOWN) {
		t.Errorf("err = %v, want the compute instance info's UNKNOWN", err)
	}
	if n := len(s.GPU(0).Instances); n != 0 {
		t.Errorf("%d GPU instances left after a failed create", n)
	}
}

// TestHealthCheckWaitsForMIGModeSwitch: a GPU switching MIG mode may be
// unbound or reset meanwhile (nvml.h) and then answers as a lost GPU; a
// health check must not catch it there and taint it as lost.
func TestHealthCheckWaitsForMIGModeSwitch(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	s, lib := openMock(t, "dgxh200", 1)
	s.EnableEvents()
	health := lib.(tnvml.Health)
	checked := make(chan error, 1)
	s.OnMIGModeActivation(func(int) {
		go func() { checked <- health.CheckGPU(ctx, 0) }()
		// A check that does not wait for the switch answers at once; one
		// that does is still waiting when the bound runs out.
		select {
		case err := <-checked:
			checked <- err
		case <-time.After(200 * time.Millisecond):
		}
	})
	if err := lib.SetMIGMode(ctx, 0, true); err != nil {
		t.Fatal(err)
	}
	if err := <-checked; err != nil {
		t.Errorf("health check during a MIG mode switch: %v, want the GPU healthy", err)
	}
}
