package hardware

import (
	"path/filepath"
	"testing"

	"k8s.io/klog/v2/ktesting"

	tnvml "github.com/tessera-gpu/tessera/internal/nvml"
	"github.com/tessera-gpu/tessera/internal/sharing"
)

// TestOpenDecidesOnce: the NVML backend alone picks the node's hardware: a
// mock gets simulated MPS daemons, time slices and device nodes (a driver
// root without driver files is no error), or the driver root's MPS daemons
// with DriverMPS; real NVML loads from the driver root, and says so when
// nothing is there.
func TestOpenDecidesOnce(t *testing.T) {
	mock, err := tnvml.ParseBackend("mock:dgxh200:2")
	if err != nil {
		t.Fatal(err)
	}
	t.Run("mock", func(t *testing.T) {
		_, ctx := ktesting.NewTestContext(t)
		state, root := t.TempDir(), t.TempDir()
		hw, err := Open(ctx, Config{NVML: mock, Seed: "n1", DriverRoot: root, StateDir: state})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = hw.Close() })
		node, err := hw.NVML.Discover(ctx)
		if err != nil || len(node.GPUs) != 2 {
			t.Fatalf("Discover = %d GPUs, %v; want 2", len(node.GPUs), err)
		}
		if mps, ok := hw.MPS.(*SimulatedMPS); !ok || mps.Root != sharing.MPSRoot(state) {
			t.Errorf("MPS = %#v, want simulated daemons under %s", hw.MPS, sharing.MPSRoot(state))
		}
		if _, ok := hw.TimeSlicer.(*SimulatedTimeSlicer); !ok {
			t.Errorf("TimeSlicer = %#v, want the simulated one", hw.TimeSlicer)
		}
		if _, err := hw.DeviceNodes.Driver(); err != nil {
			t.Errorf("simulated device nodes on a root without a driver: %v", err)
		}
	})
	t.Run("mock with the driver's MPS", func(t *testing.T) {
		_, ctx := ktesting.NewTestContext(t)
		state, root := t.TempDir(), t.TempDir()
		hw, err := Open(ctx, Config{NVML: mock, DriverRoot: root, StateDir: state, DriverMPS: true, MPSLauncher: []string{"launch"}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = hw.Close() })
		mps, ok := hw.MPS.(*sharing.MPSDaemons)
		if !ok {
			t.Fatalf("MPS = %#v, want the driver's daemons", hw.MPS)
		}
		if want := filepath.Join(root, "usr/bin/nvidia-cuda-mps-control"); mps.Binary != want || mps.Root != sharing.MPSRoot(state) || len(mps.Launcher) != 1 {
			t.Errorf("MPS daemons run %s under %s with %v, want %s under %s with the launcher", mps.Binary, mps.Root, mps.Launcher, want, sharing.MPSRoot(state))
		}
	})
	t.Run("real without a driver", func(t *testing.T) {
		_, ctx := ktesting.NewTestContext(t)
		if _, err := Open(ctx, Config{DriverRoot: t.TempDir(), StateDir: t.TempDir()}); err == nil {
			t.Fatal("Open found real NVML under an empty driver root")
		}
	})
}

// TestDriverDevicesNeedTheDriver: a GPU node's device nodes come from the
// driver's /proc and fail without it, where a simulated node's do not.
func TestDriverDevicesNeedTheDriver(t *testing.T) {
	if _, err := DriverDevices(t.TempDir()).Driver(); err == nil {
		t.Error("a /proc without the driver's devices file gave device numbers")
	}
}
