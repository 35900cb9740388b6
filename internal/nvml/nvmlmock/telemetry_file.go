package nvmlmock

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"slices"
	"sync"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"k8s.io/klog/v2"
)

// TelemetryFileName is the file beside a mock's state file (in the kubelet
// plugin's state directory) from which a mock that runs in a process of its
// own, as the local cluster's plugins run it, takes what its GPUs are doing:
// the local cluster's tests write it, as they would run work on a GPU.
const TelemetryFileName = "mock-telemetry.json"

// maxTelemetryFile bounds what is read of a telemetry file.
const maxTelemetryFile = 1 << 20

// Telemetry is a telemetry file's content: by GPU index, what the GPU is
// doing. A GPU left out keeps what it was doing.
type Telemetry struct {
	GPUs map[int]GPUTelemetry `json:"gpus"`
}

// GPUTelemetry is what one GPU is doing.
type GPUTelemetry struct {
	// UtilizationPercent is what nvmlDeviceGetUtilizationRates reports as
	// gpu: the percent of time a kernel ran.
	UtilizationPercent uint32 `json:"utilizationPercent"`
	// MemoryPercent is its memory utilization.
	MemoryPercent uint32 `json:"memoryPercent,omitempty"`
	// MIG is, by GPU instance ID, what its MIG instances are doing.
	MIG map[int]MIGTelemetry `json:"mig,omitempty"`
	// Processes are the compute processes on the GPU, all of them: a GPU
	// the file names without processes runs none. They keep doing what
	// they do: NVML has a new utilization sample of them at every read.
	Processes []ProcessTelemetry `json:"processes,omitempty"`
}

// ProcessTelemetry is one compute process on a GPU.
type ProcessTelemetry struct {
	// PID is the process's ID as NVML lists it; not 0.
	PID uint32 `json:"pid"`
	// MemoryUsedBytes is the device memory it uses.
	MemoryUsedBytes uint64 `json:"memoryUsedBytes,omitempty"`
	// SMUtilizationPercent is its SM utilization, 0-100; 0 is idle, with
	// no sample, as NVML has none for an idle process.
	SMUtilizationPercent uint32 `json:"smUtilizationPercent,omitempty"`
	// MPSDaemon, when set, makes it a client of that MPS control daemon:
	// on the local cluster the daemon's ID is its claim's UID. The
	// simulated daemon reports it as its own, and names no daemon that does
	// not run (see Process.MPSDaemon).
	MPSDaemon string `json:"mpsDaemon,omitempty"`
}

// MIGTelemetry is what one MIG instance is doing.
type MIGTelemetry struct {
	// UtilizationPercent is its GPM graphics activity, 0-100.
	UtilizationPercent float64 `json:"utilizationPercent"`
	// MemoryUsedBytes is its memory in use.
	MemoryUsedBytes uint64 `json:"memoryUsedBytes,omitempty"`
}

// telemetryFile follows a telemetry file.
type telemetryFile struct {
	path string
	mu   sync.Mutex
	// last is the content last applied.
	last []byte
}

// FollowTelemetry makes the mock take what its GPUs are doing from the file
// at path, read again before each answer to nvmlDeviceGetUtilizationRates,
// each process list or process utilization reading, each GPM sample of a
// MIG instance and each MPSClients, and applied when its content changed. A missing file changes nothing. A file that cannot be read, is no
// valid Telemetry or names a GPU the mock does not have fails the call that
// read it with NVML_ERROR_UNKNOWN, so that a test's mistake shows in the
// plugin's log rather than as idle GPUs. Call it before the mock is used.
func (s *Server) FollowTelemetry(path string) {
	f := &telemetryFile{path: path}
	s.telemetry = f
	// "NVML_ERROR_UNKNOWN on any unexpected error"
	apply := func() nvml.Return {
		if s.applyTelemetry(f) != nil {
			return nvml.ERROR_UNKNOWN
		}
		return nvml.SUCCESS
	}
	for _, d := range s.strict {
		rates := d.dev.GetUtilizationRatesFunc
		d.dev.GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) {
			if ret := apply(); ret != nvml.SUCCESS {
				return nvml.Utilization{}, ret
			}
			return rates()
		}
		for _, list := range []*func() ([]nvml.ProcessInfo, nvml.Return){&d.dev.GetComputeRunningProcessesFunc, &d.dev.GetMPSComputeRunningProcessesFunc} {
			read := *list
			*list = func() ([]nvml.ProcessInfo, nvml.Return) {
				if ret := apply(); ret != nvml.SUCCESS {
					return nil, ret
				}
				return read()
			}
		}
		samples := d.dev.GetProcessUtilizationFunc
		d.dev.GetProcessUtilizationFunc = func(lastSeen uint64) ([]nvml.ProcessUtilizationSample, nvml.Return) {
			if ret := apply(); ret != nvml.SUCCESS {
				return nil, ret
			}
			return samples(lastSeen)
		}
	}
	sample := s.GpmMigSampleGetFunc
	s.GpmMigSampleGetFunc = func(dev nvml.Device, gpuInstanceID int, gs nvml.GpmSample) nvml.Return {
		if ret := apply(); ret != nvml.SUCCESS {
			return ret
		}
		return sample(dev, gpuInstanceID, gs)
	}
}

// applyTelemetry applies the file's content when it changed.
func (s *Server) applyTelemetry(f *telemetryFile) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	data, err := readBounded(f.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err == nil && bytes.Equal(data, f.last) {
		return nil
	}
	if err == nil {
		err = s.setTelemetry(data)
	}
	if err != nil {
		klog.Background().Error(err, "Mock NVML: ignoring the telemetry file", "path", f.path)
		return fmt.Errorf("mock NVML telemetry file %s: %w", f.path, err)
	}
	f.last = data
	return nil
}

func readBounded(path string) ([]byte, error) {
	file, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer func() { _ = file.Close() }() // read only
	data, err := io.ReadAll(io.LimitReader(file, maxTelemetryFile+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxTelemetryFile {
		return nil, fmt.Errorf("larger than %d bytes", maxTelemetryFile)
	}
	return data, nil
}

// setTelemetry checks data whole, then applies it.
func (s *Server) setTelemetry(data []byte) error {
	var t Telemetry
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&t); err != nil {
		return err
	}
	for index, g := range t.GPUs {
		if index < 0 || index >= len(s.strict) {
			return fmt.Errorf("GPU %d: the mock has GPUs 0 to %d", index, len(s.strict)-1)
		}
		if g.UtilizationPercent > 100 || g.MemoryPercent > 100 {
			return fmt.Errorf("GPU %d: a utilization above 100 percent", index)
		}
		for gi, m := range g.MIG {
			if m.UtilizationPercent < 0 || m.UtilizationPercent > 100 {
				return fmt.Errorf("GPU %d, GPU instance %d: utilization %v is not 0 to 100 percent", index, gi, m.UtilizationPercent)
			}
		}
	}
	if err := checkProcesses(t); err != nil {
		return err
	}
	for index, g := range t.GPUs {
		s.SetUtilization(index, g.UtilizationPercent, g.MemoryPercent)
		for gi, m := range g.MIG {
			s.SetMIGActivity(index, gi, MIGActivity{UtilPercent: m.UtilizationPercent, MemoryUsedBytes: m.MemoryUsedBytes})
		}
		procs := make([]Process, 0, len(g.Processes))
		for _, p := range g.Processes {
			procs = append(procs, Process{PID: p.PID, MemoryUsedBytes: p.MemoryUsedBytes, SMUtilPercent: p.SMUtilizationPercent, MPSDaemon: p.MPSDaemon})
		}
		s.setProcesses(index, procs, true)
	}
	return nil
}

// checkProcesses refuses processes no GPU can have: PID 0, a PID twice on
// one GPU, more than 100 percent, or one process the client of two MPS
// daemons (a process reaches MPS through the one pipe directory in its
// environment).
func checkProcesses(t Telemetry) error {
	daemonOf := map[uint32]string{}
	for _, index := range slices.Sorted(maps.Keys(t.GPUs)) {
		seen := map[uint32]bool{}
		for _, p := range t.GPUs[index].Processes {
			switch {
			case p.PID == 0:
				return fmt.Errorf("GPU %d: a process with PID 0", index)
			case seen[p.PID]:
				return fmt.Errorf("GPU %d: PID %d listed twice", index, p.PID)
			case p.SMUtilizationPercent > 100:
				return fmt.Errorf("GPU %d, PID %d: SM utilization %d is not 0 to 100 percent", index, p.PID, p.SMUtilizationPercent)
			}
			seen[p.PID] = true
			if d, ok := daemonOf[p.PID]; ok && d != p.MPSDaemon {
				return fmt.Errorf("GPU %d, PID %d: client of MPS daemon %q here and %q on another GPU", index, p.PID, p.MPSDaemon, d)
			}
			daemonOf[p.PID] = p.MPSDaemon
		}
	}
	return nil
}
