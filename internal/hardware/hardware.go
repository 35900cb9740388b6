// Package hardware opens what the node side needs from the GPUs and their
// driver: NVML, the MPS control daemons, time slicing and the device nodes
// a container gets. Whether the GPUs are real or go-nvml's mock servers is
// decided here, once, from the NVML backend: everything above takes the
// Node that Open returns and cannot tell which it got.
package hardware

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"k8s.io/klog/v2"

	tcdi "github.com/tessera-gpu/tessera/internal/cdi"
	"github.com/tessera-gpu/tessera/internal/driverroot"
	tnvml "github.com/tessera-gpu/tessera/internal/nvml"
	"github.com/tessera-gpu/tessera/internal/nvml/nvmlmock"
	"github.com/tessera-gpu/tessera/internal/sharing"
)

// Config says which GPUs to open and where their driver is.
type Config struct {
	// NVML is the backend: real NVML, or a mock model (tnvml.ParseBackend).
	NVML tnvml.Backend
	// Seed makes a mock's UUIDs differ between simulated nodes; the node
	// name is a good seed.
	Seed string
	// DriverRoot is the driver root as this process sees it (default /):
	// NVML, nvidia-smi and the MPS control daemon are found under it.
	DriverRoot string
	// ProcRoot is the /proc whose devices file gives the driver's device
	// majors and whose driver/nvidia/capabilities tree gives the MIG
	// capability minors (default <DriverRoot>/proc).
	ProcRoot string
	// StateDir is the plugin's state directory: MPS daemons keep their
	// directories under it (sharing.MPSRoot), and a mock keeps its GPUs'
	// MIG state there, so that MIG instances outlive a restart of the
	// plugin as on hardware. Empty keeps a mock's state in memory.
	StateDir string
	// DriverMPS runs MPS daemons with the driver root's
	// nvidia-cuda-mps-control even on a mock backend, through the code of a
	// GPU node: for a fake driver root whose MPS binaries run (the real-node
	// lane's stand-in). Real NVML always does.
	DriverMPS bool
	// MPSLauncher runs real MPS daemons, holding their liveness locks and
	// giving them a private /dev/shm (sharing.MPSDaemons.Launcher).
	MPSLauncher []string
	// MPSShmSize is the size in bytes of each MPS daemon's /dev/shm; 0
	// takes sharing.DefaultShmSize.
	MPSShmSize int64
}

// Node is what the node side uses of the hardware.
type Node struct {
	// NVML discovers the GPUs and makes MIG instances.
	NVML tnvml.Library
	// MPS runs the claims' MPS control daemons.
	MPS sharing.MPSControl
	// TimeSlicer sets GPUs' time slices.
	TimeSlicer sharing.TimeSlicer
	// DeviceNodes are the device nodes of the claims' CDI specs.
	DeviceNodes DeviceNodes
}

// DeviceNodes gives the device nodes a container needs, numbered as the
// driver numbers them.
type DeviceNodes interface {
	// Driver reads the driver's device numbers, once for each CDI spec:
	// the majors of dynamically numbered modules change when they reload.
	Driver() (tcdi.Driver, error)
	// Control returns the nodes every GPU container needs: the control
	// and UVM nodes.
	Control(d tcdi.Driver) ([]tcdi.DeviceNode, error)
	// MIGCapabilities returns the capability nodes of a GPU instance and
	// its compute instance on the GPU with the given minor.
	MIGCapabilities(d tcdi.Driver, gpuMinor, gpuInstanceID, computeInstanceID int) ([]tcdi.DeviceNode, error)
}

// Open opens the node's GPUs: real NVML with the driver's MPS daemons,
// nvidia-smi and /proc, or a mock with simulated ones (Simulated).
func Open(ctx context.Context, cfg Config) (Node, error) {
	lib, err := OpenNVML(cfg)
	if err != nil {
		return Node{}, err
	}
	if cfg.NVML.Mock == "" {
		return Driver(ctx, lib, cfg), nil
	}
	return Simulated(ctx, lib, cfg), nil
}

// OpenNVML opens only the backend's NVML, for what reads the GPUs and
// changes nothing.
func OpenNVML(cfg Config) (tnvml.Library, error) {
	b := cfg.NVML
	b.Seed = cfg.Seed
	b.DriverRoot = cfg.driverRoot()
	if cfg.StateDir != "" && b.Mock != "" {
		b.StateFile = filepath.Join(cfg.StateDir, nvmlmock.StateFileName)
	}
	return tnvml.Open(b)
}

// Close releases NVML.
func (n Node) Close() error { return n.NVML.Shutdown() }

// Driver is a GPU node's hardware: lib, and the MPS control daemon,
// nvidia-smi and /proc of the driver under cfg.DriverRoot.
func Driver(ctx context.Context, lib tnvml.Library, cfg Config) Node {
	return Node{NVML: lib, MPS: driverMPS(ctx, cfg), TimeSlicer: driverTimeSlicer(ctx, cfg), DeviceNodes: DriverDevices(cfg.procRoot())}
}

func (c Config) driverRoot() string {
	if c.DriverRoot == "" {
		return "/"
	}
	return c.DriverRoot
}

func (c Config) procRoot() string {
	if c.ProcRoot != "" {
		return c.ProcRoot
	}
	return filepath.Join(c.driverRoot(), "proc")
}

// driverMPS runs each claim's daemon with the driver's
// nvidia-cuda-mps-control, each with a tmpfs /dev/shm of its own.
func driverMPS(ctx context.Context, cfg Config) *sharing.MPSDaemons {
	root := driverroot.New(cfg.driverRoot())
	return &sharing.MPSDaemons{
		Root: sharing.MPSRoot(cfg.StateDir), Binary: driverBinary(ctx, root, "nvidia-cuda-mps-control"), Env: root.Env(os.Getenv("PATH")),
		Launcher: cfg.MPSLauncher, Shm: sharing.Tmpfs{}, ShmSizeBytes: cfg.MPSShmSize,
	}
}

// driverTimeSlicer sets time slices with the driver's nvidia-smi.
func driverTimeSlicer(ctx context.Context, cfg Config) sharing.NvidiaSMI {
	root := driverroot.New(cfg.driverRoot())
	return sharing.NvidiaSMI{Binary: driverBinary(ctx, root, "nvidia-smi"), Env: root.Env(os.Getenv("PATH"))}
}

// DriverDevices reads the device nodes from the driver's /proc at procRoot.
func DriverDevices(procRoot string) DeviceNodes { return driverDevices{procRoot: procRoot} }

type driverDevices struct{ procRoot string }

func (d driverDevices) Driver() (tcdi.Driver, error) { return tcdi.ReadDriver(d.procRoot) }

func (driverDevices) Control(d tcdi.Driver) ([]tcdi.DeviceNode, error) { return d.Control() }

func (driverDevices) MIGCapabilities(d tcdi.Driver, gpuMinor, gi, ci int) ([]tcdi.DeviceNode, error) {
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
