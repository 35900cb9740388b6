package hardware

import (
	"context"
	"errors"
	"os"
	"sync"

	configapi "github.com/tessera-gpu/tessera/api/config/v1alpha1"
	tcdi "github.com/tessera-gpu/tessera/internal/cdi"
	tnvml "github.com/tessera-gpu/tessera/internal/nvml"
	"github.com/tessera-gpu/tessera/internal/sharing"
)

// Simulated is a mock node's hardware, on machines with no NVIDIA driver
// (the local cluster, e2e): MPS daemons (unless cfg.DriverMPS) and time
// slices are kept in memory (the daemons' clients are the processes the
// mock runs for them), and MIG capability minors are made up from the
// instance IDs instead of read from /proc. Device majors are still read from
// the proc root's devices file where a fake driver root has one; without
// it, device nodes are given by path alone and must exist on the host.
func Simulated(ctx context.Context, lib tnvml.Library, cfg Config) Node {
	n := Node{NVML: lib, TimeSlicer: &SimulatedTimeSlicer{}, DeviceNodes: simulatedDevices{procRoot: cfg.procRoot()}}
	if cfg.DriverMPS {
		n.MPS = driverMPS(ctx, cfg)
	} else {
		root := ""
		if cfg.StateDir != "" {
			root = sharing.MPSRoot(cfg.StateDir)
		}
		mps := NewSimulatedMPS(root)
		if s := tnvml.MockServer(lib); s != nil {
			mps.Clients = s.MPSClients
		}
		n.MPS = mps
	}
	return n
}

// simulatedCapabilityMode is the mode the driver reports for MIG
// instances' capabilities (DeviceFileMode: 292, i.e. 0444).
const simulatedCapabilityMode = 0o444

// simulatedDevices are the device nodes of a driver that may not be there.
type simulatedDevices struct{ procRoot string }

func (s simulatedDevices) Driver() (tcdi.Driver, error) {
	d, err := tcdi.ReadDriver(s.procRoot)
	// Machines without NVIDIA's driver have no devices file under a fake
	// root, or one without NVIDIA's majors.
	if err != nil && (errors.Is(err, os.ErrNotExist) || errors.Is(err, tcdi.ErrDriverNotLoaded)) {
		return tcdi.Driver{ProcRoot: s.procRoot}, nil
	}
	return d, err
}

func (simulatedDevices) Control(d tcdi.Driver) ([]tcdi.DeviceNode, error) {
	if d.GPUMajor == 0 {
		var out []tcdi.DeviceNode
		for _, path := range []string{"/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"} {
			out = append(out, tcdi.DeviceNode{Path: path})
		}
		return out, nil
	}
	return d.Control()
}

func (simulatedDevices) MIGCapabilities(d tcdi.Driver, gpuMinor, gi, ci int) ([]tcdi.DeviceNode, error) {
	base := int64(1000 + gpuMinor*1000 + gi*10)
	return []tcdi.DeviceNode{
		tcdi.MIGCapabilityNode(d.CapsMajor, base, simulatedCapabilityMode),
		tcdi.MIGCapabilityNode(d.CapsMajor, base+1+int64(ci), simulatedCapabilityMode),
	}, nil
}

// SimulatedTimeSlicer records each GPU's time slice.
type SimulatedTimeSlicer struct {
	mu        sync.Mutex
	intervals map[string]configapi.TimeSliceInterval
}

var _ sharing.TimeSlicer = (*SimulatedTimeSlicer)(nil)

// SetTimeSlice records the interval.
func (f *SimulatedTimeSlicer) SetTimeSlice(_ context.Context, gpuUUID string, interval configapi.TimeSliceInterval) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.intervals == nil {
		f.intervals = map[string]configapi.TimeSliceInterval{}
	}
	f.intervals[gpuUUID] = interval
	return nil
}

// Interval returns the GPU's recorded interval, Default when never set.
func (f *SimulatedTimeSlicer) Interval(gpuUUID string) configapi.TimeSliceInterval {
	f.mu.Lock()
	defer f.mu.Unlock()
	if v, ok := f.intervals[gpuUUID]; ok {
		return v
	}
	return configapi.DefaultTimeSlice
}
