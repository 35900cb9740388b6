package nvml

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"k8s.io/dynamic-resource-allocation/deviceattribute"

	"github.com/tessera-gpu/tessera/internal/nvml/nvmlmock"
)

// Backend names the NVML implementation: "real" (the default) or
// "mock:<model>[:<count>]" with model one of dgxa100, dgxh100, dgxh200,
// dgxb200 and count the number of GPUs (8 when omitted).
type Backend struct {
	Mock  string
	Count int
	// Seed makes mock UUIDs differ between simulated nodes; the node name
	// is a good seed.
	Seed string
	// StateFile, for a mock, is where its GPUs' MIG state is kept so that it
	// survives a restart of the process, as a GPU's survives a restart of
	// the plugin; empty keeps it in memory only. The mock also follows the
	// telemetry file beside it (nvmlmock.TelemetryFileName), through which
	// the local cluster's tests set what its GPUs are doing.
	StateFile string
	// DriverRoot, for real NVML, is the driver root as this process sees
	// it; NVML is loaded from it by explicit path (empty is /).
	DriverRoot string
}

// ParseBackend parses the --nvml flag's value.
func ParseBackend(spec string) (Backend, error) {
	if spec == "" || spec == "real" {
		return Backend{}, nil
	}
	rest, ok := strings.CutPrefix(spec, "mock:")
	if !ok {
		return Backend{}, fmt.Errorf("NVML backend %q: want \"real\" or \"mock:<model>[:<count>]\"", spec)
	}
	model, countStr, hasCount := strings.Cut(rest, ":")
	b := Backend{Mock: model, Count: 8}
	if _, ok := nvmlmock.Models[model]; !ok {
		return Backend{}, fmt.Errorf("NVML backend %q: unknown mock model %q (known: dgxa100, dgxh100, dgxh200, dgxb200)", spec, model)
	}
	if hasCount {
		n, err := strconv.Atoi(countStr)
		if err != nil || n < 1 || n > 64 {
			return Backend{}, fmt.Errorf("NVML backend %q: GPU count %q is not a number from 1 to 64", spec, countStr)
		}
		b.Count = n
	}
	return b, nil
}

// String returns the flag form of the backend.
func (b Backend) String() string {
	if b.Mock == "" {
		return "real"
	}
	return fmt.Sprintf("mock:%s:%d", b.Mock, b.Count)
}

// Open initialises the backend.
func Open(b Backend) (Library, error) {
	if b.Mock == "" {
		return openReal(b.DriverRoot)
	}
	s, err := nvmlmock.New(b.Mock, b.Count, b.Seed)
	if err != nil {
		return nil, err
	}
	if b.StateFile != "" {
		if err := s.Persist(b.StateFile); err != nil {
			return nil, err
		}
		s.FollowTelemetry(filepath.Join(filepath.Dir(b.StateFile), nvmlmock.TelemetryFileName))
	}
	// Events change the mock's device functions; doing it on the first
	// watch would race with a discovery running at the same time.
	s.EnableEvents()
	return newLibrary(s, s.GpuInstanceProfileInfoV3, nil)
}

// OpenMock wraps an existing mock server, for tests that also inspect the
// server's state.
func OpenMock(s *nvmlmock.Server) (Library, error) {
	return newLibrary(s, s.GpuInstanceProfileInfoV3, nil)
}

// MockServer returns the mock server under lib; nil when lib is real NVML.
// The simulated hardware asks it which processes run for which MPS daemon.
func MockServer(lib Library) *nvmlmock.Server {
	if l, ok := lib.(*library); ok {
		if s, ok := l.nvml.(*nvmlmock.Server); ok {
			return s
		}
	}
	return nil
}

// pcieRoot resolves the PCIe root complex of a GPU through sysfs; empty when
// sysfs does not know the device.
func pcieRoot(busID string) string {
	attr, err := deviceattribute.GetPCIeRootAttributeByPCIBusID(busID)
	if err != nil || attr.Value.StringValue == nil {
		return ""
	}
	return *attr.Value.StringValue
}
