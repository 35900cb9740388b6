package nvml_test

import (
	"os"
	"path/filepath"
	"testing"

	gonvml "github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/google/go-cmp/cmp"
	"k8s.io/klog/v2/ktesting"

	tnvml "github.com/tessera-gpu/tessera/internal/nvml"
	"github.com/tessera-gpu/tessera/internal/nvml/nvmlmock"
)

// TestMockFollowsTelemetryFile: a mock opened with a state file, as the
// local cluster's plugins open it, takes each GPU's utilization from the
// telemetry file beside it, again whenever the file changes; no file leaves
// the GPUs idle, and a file naming a GPU the mock lacks or no valid JSON
// fails the reading instead of passing for idle.
func TestMockFollowsTelemetryFile(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	dir := t.TempDir()
	lib, err := tnvml.Open(tnvml.Backend{Mock: "dgxh200", Count: 2, Seed: "n1", StateFile: filepath.Join(dir, nvmlmock.StateFileName)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = lib.Shutdown() })
	node, err := lib.Discover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tele := lib.(tnvml.Telemetry)
	utilization := func() ([]float64, error) {
		var out []float64
		for _, g := range node.GPUs {
			u, err := tele.GPUUsage(ctx, g.UUID)
			if err != nil {
				return nil, err
			}
			out = append(out, *u.Utilization)
		}
		return out, nil
	}
	file := filepath.Join(dir, nvmlmock.TelemetryFileName)
	write := func(content string) {
		if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, step := range []struct {
		name, file string
		want       []float64
		wantErr    bool
	}{
		{name: "no file", want: []float64{0, 0}},
		{name: "GPU 1 busy", file: `{"gpus": {"1": {"utilizationPercent": 80}}}`, want: []float64{0, 0.8}},
		{name: "GPU 0 busy too, GPU 1 left as it was", file: `{"gpus": {"0": {"utilizationPercent": 3}}}`, want: []float64{0.03, 0.8}},
		{name: "a GPU the mock lacks", file: `{"gpus": {"2": {"utilizationPercent": 50}}}`, wantErr: true},
		{name: "no JSON", file: `{"gpus": `, wantErr: true},
		{name: "an unknown field", file: `{"gpus": {"0": {"utilisation": 50}}}`, wantErr: true},
		{name: "valid again", file: `{"gpus": {"0": {"utilizationPercent": 0}, "1": {"utilizationPercent": 100}}}`, want: []float64{0, 1}},
	} {
		if step.file != "" {
			write(step.file)
		}
		got, err := utilization()
		if (err != nil) != step.wantErr {
			t.Fatalf("%s: error %v, want error %t", step.name, err, step.wantErr)
		}
		if diff := cmp.Diff(step.want, got); !step.wantErr && diff != "" {
			t.Errorf("%s: utilization (-want +got):\n%s", step.name, diff)
		}
	}
}

// TestMockTelemetryFileProcesses: processes set through the telemetry file
// are listed with their memory, an MPS daemon's clients among the GPU's MPS
// processes and the others among its compute processes, each in one list
// only, so that Processes finds them only by reading both; their
// utilization has a sample newer than every read, as NVML keeps sampling a
// steady workload; MPSClients names each client's daemon and GPU. A file
// no GPU could run (PID 0, a PID twice, more than 100 percent, one process
// the client of two daemons) fails every reading and MPSClients.
func TestMockTelemetryFileProcesses(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	dir := t.TempDir()
	s, err := nvmlmock.New("dgxh200", 2, "n1")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Persist(filepath.Join(dir, nvmlmock.StateFileName)); err != nil {
		t.Fatal(err)
	}
	s.FollowTelemetry(filepath.Join(dir, nvmlmock.TelemetryFileName))
	lib, err := tnvml.OpenMock(s)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = lib.Shutdown() })
	node, err := lib.Discover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	gpu1 := node.GPUs[1].UUID
	write := func(content string) {
		if err := os.WriteFile(filepath.Join(dir, nvmlmock.TelemetryFileName), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(`{"gpus": {"1": {"utilizationPercent": 70, "processes": [
		{"pid": 4100, "memoryUsedBytes": 1073741824, "smUtilizationPercent": 45, "mpsDaemon": "claim-b"},
		{"pid": 4101, "memoryUsedBytes": 2147483648, "mpsDaemon": "claim-b"},
		{"pid": 4200, "memoryUsedBytes": 3221225472, "smUtilizationPercent": 20}]}}}`)

	dev, ret := s.DeviceGetHandleByUUID(gpu1)
	if ret != gonvml.SUCCESS {
		t.Fatal(ret)
	}
	pids := func(infos []gonvml.ProcessInfo, ret gonvml.Return) []uint32 {
		t.Helper()
		if ret != gonvml.SUCCESS {
			t.Fatalf("list processes: %v", ret)
		}
		var out []uint32
		for _, p := range infos {
			out = append(out, p.Pid)
		}
		return out
	}
	if diff := cmp.Diff([]uint32{4200}, pids(dev.GetComputeRunningProcesses())); diff != "" {
		t.Errorf("compute processes (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]uint32{4100, 4101}, pids(dev.GetMPSComputeRunningProcesses())); diff != "" {
		t.Errorf("MPS processes (-want +got):\n%s", diff)
	}

	tele := lib.(tnvml.Telemetry)
	want := []tnvml.ProcessUsage{
		{PID: 4200, MemoryUsedBytes: 3 << 30, SMUtilization: ptr(0.2)},
		{PID: 4100, MemoryUsedBytes: 1 << 30, SMUtilization: ptr(0.45)},
		{PID: 4101, MemoryUsedBytes: 2 << 30},
	}
	var since uint64
	for read := range 3 {
		got, newest, err := tele.Processes(ctx, gpu1, since)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("read %d (-want +got):\n%s", read, diff)
		}
		if newest <= since {
			t.Errorf("read %d: newest sample %d, not after the last read's %d", read, newest, since)
		}
		since = newest
	}
	clients, err := s.MPSClients()
	if err != nil {
		t.Fatal(err)
	}
	wantClients := []nvmlmock.MPSClient{{Daemon: "claim-b", GPUUUID: gpu1, PID: 4100}, {Daemon: "claim-b", GPUUUID: gpu1, PID: 4101}}
	if diff := cmp.Diff(wantClients, clients); diff != "" {
		t.Errorf("MPS clients (-want +got):\n%s", diff)
	}

	for name, file := range map[string]string{
		"PID 0":                         `{"gpus": {"1": {"processes": [{"pid": 0}]}}}`,
		"a PID twice":                   `{"gpus": {"1": {"processes": [{"pid": 5}, {"pid": 5}]}}}`,
		"above 100 percent":             `{"gpus": {"1": {"processes": [{"pid": 5, "smUtilizationPercent": 101}]}}}`,
		"a client of two daemons":       `{"gpus": {"0": {"processes": [{"pid": 5, "mpsDaemon": "x"}]}, "1": {"processes": [{"pid": 5, "mpsDaemon": "y"}]}}}`,
		"an unknown field of a process": `{"gpus": {"1": {"processes": [{"pid": 5, "daemon": "x"}]}}}`,
	} {
		write(file)
		if _, _, err := tele.Processes(ctx, gpu1, 0); err == nil {
			t.Errorf("%s: Processes succeeded", name)
		}
		if _, err := s.MPSClients(); err == nil {
			t.Errorf("%s: MPSClients succeeded", name)
		}
	}
	write(`{"gpus": {"1": {}}}`)
	got, _, err := tele.Processes(ctx, gpu1, 0)
	if err != nil || len(got) != 0 {
		t.Errorf("a GPU named without processes: processes %v, err %v; want none", got, err)
	}
}
