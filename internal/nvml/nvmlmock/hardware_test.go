package nvmlmock

import (
	"path/filepath"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/google/go-cmp/cmp"
)

// These tests pin the mock to the nvml.h behaviour it models (see
// hardware.go), calling it as go-nvml's Interface, without Tessera's code.

func newServer(t *testing.T, model string, count int) *Server {
	t.Helper()
	s, err := New(model, count, t.Name())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

type answer struct {
	Ret, Activation  nvml.Return
	Current, Pending int
}

func setMode(s *Server, index, mode int) answer {
	dev := s.Devices[index]
	ret, activation := dev.SetMigMode(mode)
	current, pending, _ := dev.GetMigMode()
	return answer{ret, activation, current, pending}
}

func TestMockSetMigMode(t *testing.T) {
	const off, on = nvml.DEVICE_MIG_DISABLE, nvml.DEVICE_MIG_ENABLE
	tests := map[string]struct {
		model string
		setup func(*Server)
		mode  int
		want  answer
	}{
		"hopper switches at once": {model: "dgxh200", mode: on, want: answer{nvml.SUCCESS, nvml.SUCCESS, on, on}},
		"current mode":            {model: "dgxh200", mode: off, want: answer{nvml.SUCCESS, nvml.SUCCESS, off, off}},
		"busy, even the current mode": {
			model: "dgxh200", setup: func(s *Server) { s.SetBusy(0, true) }, mode: off,
			want: answer{nvml.SUCCESS, nvml.ERROR_IN_USE, off, off},
		},
		"busy: pending until activated": {
			model: "dgxh200", setup: func(s *Server) { s.SetBusy(0, true) }, mode: on,
			want: answer{nvml.SUCCESS, nvml.ERROR_IN_USE, off, on},
		},
		"instances block MIG off": {
			model: "dgxh200",
			setup: func(s *Server) {
				setMode(s, 0, on)
				if err := s.CreateGPUInstance(0, nvml.GPU_INSTANCE_PROFILE_1_SLICE, 0, 1); err != nil {
					panic(err)
				}
			},
			mode: off, want: answer{nvml.SUCCESS, nvml.ERROR_IN_USE, on, off},
		},
		"a100 needs a reset":   {model: "dgxa100", mode: off, want: answer{nvml.SUCCESS, nvml.ERROR_RESET_REQUIRED, on, off}},
		"hopper in a VM":       {model: "dgxh200", setup: func(s *Server) { s.SetResetRequired(0, true) }, mode: on, want: answer{nvml.SUCCESS, nvml.ERROR_RESET_REQUIRED, off, on}},
		"invalid mode refused": {model: "dgxh200", mode: 7, want: answer{nvml.ERROR_INVALID_ARGUMENT, nvml.SUCCESS, off, off}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			s := newServer(t, tc.model, 1)
			if tc.setup != nil {
				tc.setup(s)
			}
			if diff := cmp.Diff(tc.want, setMode(s, 0, tc.mode)); diff != "" {
				t.Errorf("SetMigMode(%d) (-want +got):\n%s", tc.mode, diff)
			}
		})
	}
}

func TestMockMIGQueriesNotSupportedWhileMIGOff(t *testing.T) {
	s := newServer(t, "dgxh200", 1)
	dev := s.Devices[0]
	info, ret := dev.GetGpuInstanceProfileInfo(nvml.GPU_INSTANCE_PROFILE_1_SLICE)
	if ret != nvml.SUCCESS {
		t.Fatalf("v1 profile info with MIG off: %v, want SUCCESS", ret)
	}
	if _, ret := s.GpuInstanceProfileInfoV3(dev, nvml.GPU_INSTANCE_PROFILE_1_SLICE); ret != nvml.ERROR_NOT_SUPPORTED {
		t.Errorf("v3 profile info with MIG off: %v, want NOT_SUPPORTED", ret)
	}
	if _, ret := dev.GetGpuInstances(&info); ret != nvml.ERROR_NOT_SUPPORTED {
		t.Errorf("GetGpuInstances with MIG off: %v, want NOT_SUPPORTED", ret)
	}
	if _, ret := dev.GetGpuInstanceById(0); ret != nvml.ERROR_NOT_SUPPORTED {
		t.Errorf("GetGpuInstanceById with MIG off: %v, want NOT_SUPPORTED", ret)
	}
	setMode(s, 0, nvml.DEVICE_MIG_ENABLE)
	v3, ret := s.GpuInstanceProfileInfoV3(dev, nvml.GPU_INSTANCE_PROFILE_1_SLICE)
	if name := cName(v3.Name[:]); ret != nvml.SUCCESS || name != "MIG 1g.18gb" {
		t.Errorf("v3 profile info with MIG on: %q, %v; want \"MIG 1g.18gb\"", name, ret)
	}
	zero, ret := dev.GetGpuInstanceProfileInfo(zeroInstanceProfile)
	if ret != nvml.SUCCESS || zero.InstanceCount != 0 {
		t.Fatalf("zero-instance profile: %+v, %v", zero, ret)
	}
	if _, ret := dev.GetGpuInstances(&zero); ret != nvml.ERROR_INVALID_ARGUMENT {
		t.Errorf("GetGpuInstances of a zero-instance profile: %v, want go-nvml's INVALID_ARGUMENT", ret)
	}
}

func cName(b []int8) string {
	var out []byte
	for _, c := range b {
		if c == 0 {
			break
		}
		out = append(out, byte(c))
	}
	return string(out)
}

func TestMockMemoryInfoNotSupported(t *testing.T) {
	s := newServer(t, "dgxh200", 1)
	s.SetMemoryInfoSupported(0, false)
	if _, ret := s.Devices[0].GetMemoryInfo(); ret != nvml.ERROR_NOT_SUPPORTED {
		t.Errorf("GetMemoryInfo: %v", ret)
	}
	if _, ret := s.Devices[0].GetMemoryInfo_v2(); ret != nvml.ERROR_NOT_SUPPORTED {
		t.Errorf("GetMemoryInfo_v2: %v", ret)
	}
	s.SetMemoryInfoSupported(0, true)
	if m, ret := s.Devices[0].GetMemoryInfo_v2(); ret != nvml.SUCCESS || m.Total == 0 {
		t.Errorf("GetMemoryInfo_v2 = %+v, %v", m, ret)
	}
}

// TestMockRebootDropsInstancesAndHopperMode: a reboot takes every instance;
// Hopper comes back with MIG off, the A100 with its pending mode; a state
// file sees the same.
func TestMockRebootDropsInstancesAndHopperMode(t *testing.T) {
	for model, wantMode := range map[string]int{"dgxh200": nvml.DEVICE_MIG_DISABLE, "dgxa100": nvml.DEVICE_MIG_ENABLE} {
		t.Run(model, func(t *testing.T) {
			s := newServer(t, model, 2)
			state := filepath.Join(t.TempDir(), StateFileName)
			if err := s.Persist(state); err != nil {
				t.Fatal(err)
			}
			for i := range 2 {
				setMode(s, i, nvml.DEVICE_MIG_ENABLE)
				if err := s.CreateGPUInstance(i, nvml.GPU_INSTANCE_PROFILE_3_SLICE, 4, 4); err != nil {
					t.Fatal(err)
				}
			}
			s.Reboot()
			want := []GPUState{{MIGMode: wantMode}, {MIGMode: wantMode}}
			got := []GPUState{s.GPU(0), s.GPU(1)}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("after reboot (-want +got):\n%s", diff)
			}
			saved, err := ReadState(state)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want, saved); diff != "" {
				t.Errorf("state file after reboot (-want +got):\n%s", diff)
			}
		})
	}
}

func TestMockEventFailures(t *testing.T) {
	s := newServer(t, "dgxh200", 2)
	s.EnableEvents()
	set, _ := s.EventSetCreate()
	if ret := s.Devices[0].RegisterEvents(nvml.EventTypeXidCriticalError, set); ret != nvml.SUCCESS {
		t.Fatal(ret)
	}
	s.FailEventWait(1, nvml.ERROR_UNKNOWN) // a GPU the set does not watch
	s.FailEventWait(0, nvml.ERROR_UNKNOWN)
	if _, ret := set.Wait(1000); ret != nvml.ERROR_UNKNOWN {
		t.Errorf("wait after FailEventWait: %v, want UNKNOWN", ret)
	}
	if _, ret := set.Wait(1); ret != nvml.ERROR_TIMEOUT {
		t.Errorf("next wait: %v, want TIMEOUT", ret)
	}
	s.SetLost(0, true)
	for range 2 {
		if _, ret := set.Wait(1); ret != nvml.ERROR_GPU_IS_LOST {
			t.Errorf("wait with a lost GPU: %v, want GPU_IS_LOST", ret)
		}
	}
	other, _ := s.EventSetCreate()
	if ret := s.Devices[0].RegisterEvents(nvml.EventTypeXidCriticalError, other); ret != nvml.ERROR_GPU_IS_LOST {
		t.Errorf("register a lost GPU: %v, want GPU_IS_LOST", ret)
	}
	s.FailEventRegistration(1, nvml.ERROR_UNKNOWN)
	if ret := s.Devices[1].RegisterEvents(nvml.EventTypeXidCriticalError, other); ret != nvml.ERROR_UNKNOWN {
		t.Errorf("register with a failure set up: %v, want UNKNOWN", ret)
	}
}

// TestMockMIGUUIDsAreNewAfterReset: NVML numbers GPU instances from 0 again
// after a reset, but a re-created MIG device is a new device with a UUID of
// its own.
func TestMockMIGUUIDsAreNewAfterReset(t *testing.T) {
	s := newServer(t, "dgxh200", 1)
	uuidOfFirst := func() string {
		t.Helper()
		setMode(s, 0, nvml.DEVICE_MIG_ENABLE)
		if err := s.CreateGPUInstance(0, nvml.GPU_INSTANCE_PROFILE_1_SLICE, 0, 1); err != nil {
			t.Fatal(err)
		}
		mig, ret := s.Devices[0].GetMigDeviceHandleByIndex(0)
		if ret != nvml.SUCCESS {
			t.Fatal(ret)
		}
		uuid, _ := mig.GetUUID()
		return uuid
	}
	before := uuidOfFirst()
	s.ResetGPU(0)
	if after := uuidOfFirst(); after == before {
		t.Errorf("MIG UUID %s repeats after a reset", after)
	}
}
