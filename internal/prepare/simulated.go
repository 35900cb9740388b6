package prepare

import (
	"context"
	"errors"
	"fmt"
	"os"

	"k8s.io/klog/v2"

	tcdi "github.com/tessera-gpu/tessera/internal/cdi"
	"github.com/tessera-gpu/tessera/internal/driverroot"
	"github.com/tessera-gpu/tessera/internal/sharing"
)

// simulatedCapabilityMode is the mode the driver reports for MIG
// instances' capabilities (DeviceFileMode: 292, i.e. 0444).
const simulatedCapabilityMode = 0o444

// CapabilityLookup returns the MIG capability device nodes of a GPU
// instance and its compute instance on the GPU with the given minor.
type CapabilityLookup func(d tcdi.Driver, gpuMinor, gpuInstanceID, computeInstanceID int) ([]tcdi.DeviceNode, error)

// SimulatedDriver is for mock NVML backends, on machines with no NVIDIA
// driver (the local cluster, e2e): MPS daemons (unless WithDriverMPS) and
// time slices are recorded in memory, and MIG capability minors are made
// up from the instance IDs instead of read from /proc. Device majors are
// still read from the proc root's devices file where a fake driver root has
// one; without it, device nodes are given by path alone and must exist on
// the host.
func SimulatedDriver() Option {
	return func(p *Preparer) {
		p.simulated = true
		p.slicer = &sharing.FakeTimeSlicer{}
		p.capabilities = func(d tcdi.Driver, gpuMinor, gi, ci int) ([]tcdi.DeviceNode, error) {
			base := int64(1000 + gpuMinor*1000 + gi*10)
			return []tcdi.DeviceNode{
				tcdi.MIGCapabilityNode(d.CapsMajor, base, simulatedCapabilityMode),
				tcdi.MIGCapabilityNode(d.CapsMajor, base+1+int64(ci), simulatedCapabilityMode),
			}, nil
		}
	}
}

// WithDriverMPS runs MPS daemons with the driver root's
// nvidia-cuda-mps-control even with SimulatedDriver, through the code path
// of a real GPU node (MPSDaemons): for a fake driver root whose MPS
// binaries run, such as the real-node lane's stand-in.
func WithDriverMPS() Option { return func(p *Preparer) { p.driverMPS = true } }

// readDriver reads the driver's device numbers for one claim's spec: the
// majors of dynamically numbered modules can change when they reload.
func (p *Preparer) readDriver() (tcdi.Driver, error) {
	d, err := tcdi.ReadDriver(p.procRoot)
	// A simulated driver runs on machines without NVIDIA's: their /proc
	// has no devices file under a fake root, or one without NVIDIA's majors.
	if err != nil && p.simulated && (errors.Is(err, os.ErrNotExist) || errors.Is(err, tcdi.ErrDriverNotLoaded)) {
		return tcdi.Driver{ProcRoot: p.procRoot}, nil
	}
	return d, err
}

// controlNodes returns the driver's control and UVM nodes.
func (p *Preparer) controlNodes(d tcdi.Driver) ([]tcdi.DeviceNode, error) {
	if p.simulated && d.GPUMajor == 0 {
		var out []tcdi.DeviceNode
		for _, path := range []string{"/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"} {
			out = append(out, tcdi.DeviceNode{Path: path})
		}
		return out, nil
	}
	return d.Control()
}

func (p *Preparer) migCapabilities(d tcdi.Driver, gpuMinor, gi, ci int) ([]tcdi.DeviceNode, error) {
	if p.capabilities != nil {
		return p.capabilities(d, gpuMinor, gi, ci)
	}
	return d.MIGCapabilities(gpuMinor, gi, ci)
}

// driverBinary finds a driver binary under the root. A missing one is
// logged with every path tried and stands for the first of them, so that
// the plugin still serves what needs no binary (whole GPUs, MIG) and a
// claim that needs it fails naming the path.
func driverBinary(ctx context.Context, root driverroot.Root, name string) string {
	path, err := root.Binary(name)
	if err == nil {
		return path
	}
	var nf *driverroot.NotFoundError
	if errors.As(err, &nf) && len(nf.Tried) > 0 {
		klog.FromContext(ctx).Info("NVIDIA driver binary not found; claims that need it will fail", "binary", name, "err", err)
		return nf.Tried[0]
	}
	return fmt.Sprintf("%s/usr/bin/%s", root.Path(), name)
}
