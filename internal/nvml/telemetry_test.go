package nvml_test

import (
	"testing"

	gonvml "github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
	"github.com/google/go-cmp/cmp"
	"k8s.io/klog/v2/ktesting"

	tnvml "github.com/tessera-gpu/tessera/internal/nvml"
	"github.com/tessera-gpu/tessera/internal/nvml/nvmlmock"
)

func ptr[T any](v T) *T { return &v }

// TestGPUUsage: a whole GPU reports the utilization, memory and energy the
// hardware reports, and leaves out (nil) what it does not: energy on a GPU
// without energy readings, utilization in MIG mode (nvml.h: "not currently
// supported").
func TestGPUUsage(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	s, lib := openMock(t, "dgxh200", 2)
	tele := lib.(tnvml.Telemetry)
	node, err := lib.Discover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	total := node.GPUs[0].MemoryBytes
	s.SetUtilization(0, 37, 5)
	s.SetMemoryUsed(0, 10<<30)
	s.AddEnergy(0, 1500)
	s.SetEnergySupported(1, false)
	if err := lib.SetMIGMode(ctx, 1, true); err != nil {
		t.Fatal(err)
	}

	got, err := tele.GPUUsage(ctx, node.GPUs[0].UUID)
	if err != nil {
		t.Fatal(err)
	}
	want := tnvml.GPUUsage{Utilization: ptr(0.37), MemoryUsedBytes: ptr(uint64(10 << 30)), MemoryTotalBytes: ptr(total), EnergyMillijoules: ptr(uint64(1500))}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("GPU 0 (-want +got):\n%s", diff)
	}
	got, err = tele.GPUUsage(ctx, node.GPUs[1].UUID)
	if err != nil {
		t.Fatal(err)
	}
	want = tnvml.GPUUsage{MemoryUsedBytes: ptr(uint64(0)), MemoryTotalBytes: ptr(total)}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("GPU 1 in MIG mode without energy readings (-want +got):\n%s", diff)
	}
	if _, err := tele.GPUUsage(ctx, "GPU-nonexistent"); !tnvml.IsReturn(err, gonvml.ERROR_NOT_FOUND) {
		t.Errorf("unknown GPU: err = %v, want NOT_FOUND", err)
	}
}

// TestProcessesSinceLastRead: processes carry their memory, and their
// utilization only from samples newer than the last read; an idle process
// has no sample, as NVML returns none for it.
func TestProcessesSinceLastRead(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	s, lib := openMock(t, "dgxh100", 1)
	tele := lib.(tnvml.Telemetry)
	node, err := lib.Discover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	uuid := node.GPUs[0].UUID
	s.SetProcesses(0, nvmlmock.Process{PID: 10, MemoryUsedBytes: 1 << 30, SMUtilPercent: 40}, nvmlmock.Process{PID: 11, MemoryUsedBytes: 2 << 30})
	got, since, err := tele.Processes(ctx, uuid, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := []tnvml.ProcessUsage{{PID: 10, MemoryUsedBytes: 1 << 30, SMUtilization: ptr(0.4)}, {PID: 11, MemoryUsedBytes: 2 << 30}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("first read (-want +got):\n%s", diff)
	}
	got, since2, err := tele.Processes(ctx, uuid, since)
	if err != nil {
		t.Fatal(err)
	}
	want = []tnvml.ProcessUsage{{PID: 10, MemoryUsedBytes: 1 << 30}, {PID: 11, MemoryUsedBytes: 2 << 30}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("read with no new sample (-want +got):\n%s", diff)
	}
	if since2 != since {
		t.Errorf("timestamp moved from %d to %d without a new sample", since, since2)
	}
}

// TestMIGUsage: a MIG instance reports its own memory, and on a GPU with
// GPU performance monitoring (Hopper and later) its utilization from the
// second sample on; on an A100 (no GPM) only its memory.
func TestMIGUsage(t *testing.T) {
	for name, tc := range map[string]struct {
		model    string
		wantUtil *float64
	}{
		"H100 with GPM":    {model: "dgxh100", wantUtil: ptr(0.25)},
		"A100 without GPM": {model: "dgxa100"},
	} {
		t.Run(name, func(t *testing.T) {
			_, ctx := ktesting.NewTestContext(t)
			s, lib := openMock(t, tc.model, 1)
			tele := lib.(tnvml.Telemetry)
			if err := lib.SetMIGMode(ctx, 0, true); err != nil {
				t.Fatal(err)
			}
			mig, err := lib.CreateMIGDevice(ctx, 0, gonvml.GPU_INSTANCE_PROFILE_1_SLICE, placement(2, 1))
			if err != nil {
				t.Fatal(err)
			}
			s.SetMIGActivity(0, mig.GPUInstanceID, nvmlmock.MIGActivity{UtilPercent: 25, MemoryUsedBytes: 3 << 30})
			node, err := lib.Discover(ctx)
			if err != nil {
				t.Fatal(err)
			}
			uuid := node.GPUs[0].UUID
			first, sample, err := tele.MIGUsage(ctx, uuid, mig.GPUInstanceID, nil)
			if err != nil {
				t.Fatal(err)
			}
			if first.Utilization != nil {
				t.Errorf("utilization from one sample = %v, want none", *first.Utilization)
			}
			second, next, err := tele.MIGUsage(ctx, uuid, mig.GPUInstanceID, sample)
			if err != nil {
				t.Fatal(err)
			}
			sample.Free()
			next.Free()
			var profileBytes uint64
			for _, p := range node.GPUs[0].MIG.Profiles {
				if p.ID == gonvml.GPU_INSTANCE_PROFILE_1_SLICE {
					profileBytes = p.MemoryBytes
				}
			}
			want := tnvml.MIGUsage{Utilization: tc.wantUtil, MemoryUsedBytes: ptr(uint64(3 << 30)), MemoryTotalBytes: ptr(profileBytes)}
			if diff := cmp.Diff(want, second); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// TestProcessesInMIGMode: in MIG mode NVML still lists processes with their
// memory, but has no per-process utilization ("On MIG-enabled GPUs,
// querying process utilization is not currently supported"): none is
// reported, rather than an error or 0.
func TestProcessesInMIGMode(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	s, lib := openMock(t, "dgxh100", 1)
	if err := lib.SetMIGMode(ctx, 0, true); err != nil {
		t.Fatal(err)
	}
	node, err := lib.Discover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s.SetProcesses(0, nvmlmock.Process{PID: 7, MemoryUsedBytes: 1 << 30, SMUtilPercent: 90})
	got, _, err := lib.(tnvml.Telemetry).Processes(ctx, node.GPUs[0].UUID, 0)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]tnvml.ProcessUsage{{PID: 7, MemoryUsedBytes: 1 << 30}}, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// TestProcessesBeforeVolta: a GPU older than Volta has no MPS process list
// (nvmlDeviceGetMPSComputeRunningProcesses is "For Volta or newer fully
// supported devices"): its compute processes are still listed, and an MPS
// client, which only that list names, is not.
func TestProcessesBeforeVolta(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	s, lib := openMock(t, "dgxa100", 1)
	node, err := lib.Discover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dev := s.Devices[0].(*server.Device)
	dev.Lock()
	dev.Config.Architecture = gonvml.DEVICE_ARCH_PASCAL
	dev.Unlock()
	s.SetProcesses(0, nvmlmock.Process{PID: 7, MemoryUsedBytes: 1 << 30}, nvmlmock.Process{PID: 8, MemoryUsedBytes: 2 << 30, MPSDaemon: "d"})
	if _, ret := dev.GetMPSComputeRunningProcesses(); ret != gonvml.ERROR_NOT_SUPPORTED {
		t.Errorf("MPS process list on a Pascal GPU: %v, want NOT_SUPPORTED", ret)
	}
	got, _, err := lib.(tnvml.Telemetry).Processes(ctx, node.GPUs[0].UUID, 0)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]tnvml.ProcessUsage{{PID: 7, MemoryUsedBytes: 1 << 30}}, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}
