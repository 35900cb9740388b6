package nvmlmock

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
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
// at path, read again before each answer to nvmlDeviceGetUtilizationRates
// and each GPM sample of a MIG instance and applied when its content
// changed. A missing file changes nothing. A file that cannot be read, is no
// valid Telemetry or names a GPU the mock does not have fails the call that
// read it with NVML_ERROR_UNKNOWN, so that a test's mistake shows in the
// plugin's log rather than as idle GPUs. Call it before the mock is used.
func (s *Server) FollowTelemetry(path string) {
	f := &telemetryFile{path: path}
	for _, d := range s.strict {
		rates := d.dev.GetUtilizationRatesFunc
		d.dev.GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) {
			if ret := s.applyTelemetry(f); ret != nvml.SUCCESS {
				return nvml.Utilization{}, ret
			}
			return rates()
		}
	}
	sample := s.GpmMigSampleGetFunc
	s.GpmMigSampleGetFunc = func(dev nvml.Device, gpuInstanceID int, gs nvml.GpmSample) nvml.Return {
		if ret := s.applyTelemetry(f); ret != nvml.SUCCESS {
			return ret
		}
		return sample(dev, gpuInstanceID, gs)
	}
}

// applyTelemetry applies the file's content when it changed.
func (s *Server) applyTelemetry(f *telemetryFile) nvml.Return {
	f.mu.Lock()
	defer f.mu.Unlock()
	data, err := readBounded(f.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nvml.SUCCESS
	}
	if err == nil && bytes.Equal(data, f.last) {
		return nvml.SUCCESS
	}
	if err == nil {
		err = s.setTelemetry(data)
	}
	if err != nil {
		klog.Background().Error(err, "Mock NVML: ignoring the telemetry file", "path", f.path)
		return nvml.ERROR_UNKNOWN
	}
	f.last = data
	return nvml.SUCCESS
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
	for index, g := range t.GPUs {
		s.SetUtilization(index, g.UtilizationPercent, g.MemoryPercent)
		for gi, m := range g.MIG {
			s.SetMIGActivity(index, gi, MIGActivity{UtilPercent: m.UtilizationPercent, MemoryUsedBytes: m.MemoryUsedBytes})
		}
	}
	return nil
}
