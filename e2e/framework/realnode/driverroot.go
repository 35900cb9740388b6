package realnode

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// Majors of the fake driver's character devices, as its /proc/devices
// reports them. 195 is the NVIDIA driver's registered major
// (NV_MAJOR_DEVICE_NUMBER); the UVM and capability majors are allocated
// dynamically when their modules load, so any number no other driver of the
// test machine uses will do.
const (
	GPUMajor  = 195
	CtlMinor  = 255
	UVMMajor  = 510
	CapsMajor = 511
)

// fakeDriverVersion is the version the fake driver's files carry.
const fakeDriverVersion = "580.95.05"

// DriverLayout is where a driver install puts its user-space files, relative
// to its driver root. The three layouts are those the plugin supports
// (docs/install.md): a driver installed on the host (driver root /), the GPU
// operator's driver container (/run/nvidia/driver, laid out as a
// distribution install), and the libraries under /usr/local/nvidia of drivers
// installed for containers (GKE).
type DriverLayout struct {
	// Name is the layout's name (make node-e2e NODE_E2E_DRIVER_LAYOUT=...).
	Name string
	// Root is the driver root's path relative to the node's work directory,
	// named after the host path it stands for.
	Root string
	// LibDir and BinDir hold the libraries and the binaries, relative to
	// the driver root.
	LibDir, BinDir string
}

// DriverLayouts are the layouts the lane can run with, by name; DefaultDriverLayout
// is the one CI runs.
var DriverLayouts = map[string]DriverLayout{
	"host":             {Name: "host", Root: "host-root", LibDir: "usr/lib/" + multiarchTriplet(), BinDir: "usr/bin"},
	"gpu-operator":     {Name: "gpu-operator", Root: "run/nvidia/driver", LibDir: "usr/lib/" + multiarchTriplet(), BinDir: "usr/bin"},
	"usr-local-nvidia": {Name: "usr-local-nvidia", Root: "host-root", LibDir: "usr/local/nvidia/lib64", BinDir: "usr/local/nvidia/bin"},
}

// DefaultDriverLayout is the layout of a driver installed on the host.
const DefaultDriverLayout = "host"

// DriverLayoutNames lists DriverLayouts' names, sorted.
func DriverLayoutNames() []string {
	var names []string
	for n := range DriverLayouts {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

func multiarchTriplet() string {
	if runtime.GOARCH == "arm64" {
		return "aarch64-linux-gnu"
	}
	return "x86_64-linux-gnu"
}

// driverLibraries and driverBinaries are the files of the driver the plugin
// looks for; the fake ones are placeholders (the lane runs on mock NVML), at
// the paths and with the links a driver installer creates.
var (
	driverLibraries = []string{"libnvidia-ml.so", "libcuda.so"}
	driverBinaries  = []string{"nvidia-smi", "nvidia-cuda-mps-control", "nvidia-cuda-mps-server"}
)

// MakeDriverRoot lays out under root what an NVIDIA driver install with gpus
// GPUs creates, and nothing else:
//
//   - the libraries (libnvidia-ml.so.<version> with its .so.1 link) and
//     binaries (nvidia-smi, the MPS control daemon and server) where the
//     layout puts them;
//   - /proc/devices with the nvidia-frontend (195), nvidia-uvm and
//     nvidia-caps majors, /proc/driver/nvidia/{version,params}, each GPU's
//     /proc/driver/nvidia/gpus/<bus id>/information, and the MIG capability
//     files the driver creates when it loads (capabilities/mig/{config,monitor}
//     and /proc/driver/nvidia-caps/mig-minors);
//   - /dev/nvidia<i> and /dev/nvidiactl as real character devices (nothing
//     answers behind them), which nvidia-modprobe or the persistence daemon
//     create on every working install.
//
// There is no /dev/nvidia-uvm* and no /dev/nvidia-caps: the kernel driver
// creates neither, and the plugin's CDI specs give their type, numbers and
// mode so that the runtime creates them in the container.
func MakeDriverRoot(root string, layout DriverLayout, gpus int) error {
	if err := writeDriverFiles(root, layout, gpus); err != nil {
		return err
	}
	nodes := map[string]uint64{"nvidiactl": unix.Mkdev(GPUMajor, CtlMinor)}
	for i := range gpus {
		nodes[fmt.Sprintf("nvidia%d", i)] = unix.Mkdev(GPUMajor, uint32(i))
	}
	for name, dev := range nodes {
		path := filepath.Join(root, "dev", name)
		// 0666 as the NVIDIA driver creates them (NVreg_DeviceFileMode), so
		// that non-root containers can open them.
		if err := unix.Mknod(path, unix.S_IFCHR|0o666, int(dev)); err != nil && !os.IsExist(err) {
			return fmt.Errorf("create device node %s: %w", path, err)
		}
		if err := os.Chmod(path, 0o666); err != nil {
			return fmt.Errorf("chmod device node %s: %w", path, err)
		}
	}
	return nil
}

// writeDriverFiles writes the driver root's regular files, links and
// directories (all of it but the device nodes, which need root).
func writeDriverFiles(root string, layout DriverLayout, gpus int) error {
	files := map[string]string{
		"proc/devices": "Character devices:\n  1 mem\n  4 /dev/vc/0\n  4 tty\n  5 /dev/tty\n  5 /dev/console\n 10 misc\n" +
			fmt.Sprintf("%d nvidia-frontend\n%d nvidia-uvm\n%d nvidia-caps\n", GPUMajor, UVMMajor, CapsMajor) +
			"\nBlock devices:\n  7 loop\n  8 sd\n",
		"proc/driver/nvidia/version": fmt.Sprintf("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  %s  Release Build  (fake driver of make node-e2e)\n", fakeDriverVersion),
		// 438 is 0666, the driver's default NVreg_DeviceFileMode.
		"proc/driver/nvidia/params": "ResmanDebugLevel: 4294967295\nModifyDeviceFiles: 1\nDeviceFileUID: 0\nDeviceFileGID: 0\nDeviceFileMode: 438\n",
		// The driver's own MIG capabilities: 256 is 0400 (config needs
		// root), 292 is 0444.
		"proc/driver/nvidia/capabilities/mig/config":  "DeviceFileMinor: 1\nDeviceFileMode: 256\nDeviceFileModify: 1\n",
		"proc/driver/nvidia/capabilities/mig/monitor": "DeviceFileMinor: 2\nDeviceFileMode: 292\nDeviceFileModify: 1\n",
		"proc/driver/nvidia-caps/mig-minors":          migMinors(),
	}
	for i := range gpus {
		// The mock NVML's bus IDs (internal/nvml/nvmlmock).
		bus := fmt.Sprintf("0000:%02x:00.0", 0x10+i*0x10)
		files["proc/driver/nvidia/gpus/"+bus+"/information"] = fmt.Sprintf("Model: \t\t NVIDIA H200\nIRQ:   \t\t 0\nBus Location: \t %s\nDevice Minor: \t %d\n", bus, i)
	}
	lib := filepath.Join(root, layout.LibDir)
	for _, name := range driverLibraries {
		files[filepath.Join(layout.LibDir, name+"."+fakeDriverVersion)] = "placeholder for the driver's " + name + " (the lane runs on mock NVML)\n"
	}
	for _, name := range driverBinaries {
		files[filepath.Join(layout.BinDir, name)] = "#!/bin/false\n# placeholder for the driver's " + name + " (the lane runs on mock NVML)\n"
	}
	dirs := []string{"dev"}
	for i := range gpus {
		dirs = append(dirs, fmt.Sprintf("proc/driver/nvidia/capabilities/gpu%d/mig", i))
	}
	for _, d := range dirs {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return fmt.Errorf("create fake driver root: %w", err)
		}
	}
	for rel, content := range files {
		path := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return fmt.Errorf("create fake driver root: %w", err)
		}
		mode := os.FileMode(0o644)
		if strings.HasPrefix(content, "#!") {
			mode = 0o755
		}
		if err := os.WriteFile(path, []byte(content), mode); err != nil {
			return fmt.Errorf("create fake driver root: %w", err)
		}
	}
	// The installer's links: soname (.so.1) and development name (.so).
	for _, name := range driverLibraries {
		for _, link := range []string{name + ".1", name} {
			if err := os.Symlink(name+"."+fakeDriverVersion, filepath.Join(lib, link)); err != nil && !os.IsExist(err) {
				return fmt.Errorf("create fake driver root: %w", err)
			}
		}
	}
	return nil
}

// mpsBinaries are the driver's MPS programs, which the stand-in replaces.
var mpsBinaries = []string{"nvidia-cuda-mps-control", "nvidia-cuda-mps-server"}

// InstallMPSStandin puts the stand-in MPS program (e2e/framework/realnode/mps-standin,
// built static) in the driver root as nvidia-cuda-mps-control and
// nvidia-cuda-mps-server, where a driver installs NVIDIA's: the control
// daemon starts its servers from beside itself. Copies, not links: the
// plugin sees the driver root at another path than the host, and test pods
// mount the control program alone.
func InstallMPSStandin(root string, layout DriverLayout, standin string) error {
	data, err := os.ReadFile(standin)
	if err != nil {
		return fmt.Errorf("install the MPS stand-in: %w", err)
	}
	for _, name := range mpsBinaries {
		path := filepath.Join(root, layout.BinDir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return fmt.Errorf("install the MPS stand-in: %w", err)
		}
		// Renamed into place: a running daemon's program is never rewritten.
		tmp := path + ".new"
		if err := os.WriteFile(tmp, data, 0o755); err != nil {
			return fmt.Errorf("install the MPS stand-in: %w", err)
		}
		if err := os.Rename(tmp, path); err != nil {
			return fmt.Errorf("install the MPS stand-in: %w", err)
		}
	}
	return nil
}

// MPSControl is the host path of the driver root's nvidia-cuda-mps-control.
func (l Layout) MPSControl() string {
	return filepath.Join(l.DriverRoot, l.Driver.BinDir, mpsBinaries[0])
}

// migMinors is the driver's /proc/driver/nvidia-caps/mig-minors: the minor
// of every GPU and compute instance capability it may create, numbered from
// 3 (after config and monitor) over 32 GPUs, 15 GPU instances each and 8
// compute instances per GPU instance.
func migMinors() string {
	var b strings.Builder
	b.WriteString("config 1\nmonitor 2\n")
	minor := 3
	for gpu := range 32 {
		for gi := range 15 {
			fmt.Fprintf(&b, "gpu%d/gi%d/access %d\n", gpu, gi, minor)
			minor++
			for ci := range 8 {
				fmt.Fprintf(&b, "gpu%d/gi%d/ci%d/access %d\n", gpu, gi, ci, minor)
				minor++
			}
		}
	}
	return b.String()
}
