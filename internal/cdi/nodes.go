package cdi

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// DeviceNode is one device node a container gets.
type DeviceNode struct {
	// Path is the node's path in the container, e.g. /dev/nvidia0; on the
	// host it is the same path under the host's driver root.
	Path string
	// Major and Minor are the node's device numbers. With Major set the
	// spec says what the node is, and the container runtime creates it in
	// the container whether or not the host has it; with Major 0 the
	// runtime reads the numbers from the host's node, which must exist.
	Major, Minor int64
	// FileMode holds the node's permission bits, used with Major set.
	FileMode os.FileMode
}

// Names of the NVIDIA driver's character devices in /proc/devices. The GPU
// and control nodes' major (195, NV_MAJOR_DEVICE_NUMBER) is registered as
// "nvidia-frontend" by the driver's frontend module and as "nvidia" by
// builds without it; the UVM and capability majors are allocated
// dynamically when their module loads.
const (
	procDevicesGPU          = "nvidia-frontend"
	procDevicesGPUNewer     = "nvidia"
	procDevicesUVM          = "nvidia-uvm"
	procDevicesCaps         = "nvidia-caps"
	controlMinor            = 255 // /dev/nvidiactl
	uvmMinor, uvmToolsMinor = 0, 1
)

// defaultDeviceFileMode is the driver's NVreg_DeviceFileMode default
// (0666), for a /proc without the driver's params file.
const defaultDeviceFileMode os.FileMode = 0o666

// maxProcFile bounds what is read of one /proc file.
const maxProcFile = 1 << 20

// Driver is what the NVIDIA kernel driver reports, under one /proc, about
// the device nodes a container needs. The kernel driver creates none of
// /dev/nvidia-caps/* and /dev/nvidia-uvm* (nvidia-modprobe or a first
// CUDA call as root may, or may not have), so every node carries its type,
// numbers and mode, and the runtime makes it inside the container.
type Driver struct {
	// ProcRoot is the /proc the driver was read from (the driver root's
	// proc as this process sees it).
	ProcRoot string
	// GPUMajor is the major of /dev/nvidia<N> and /dev/nvidiactl.
	GPUMajor int64
	// UVMMajor and CapsMajor are 0 while their module is not loaded.
	UVMMajor, CapsMajor int64
	// FileMode is the mode the driver gives its GPU, control and UVM nodes
	// (NVreg_DeviceFileMode in /proc/driver/nvidia/params).
	FileMode os.FileMode
}

// ErrDriverNotLoaded is returned when /proc/devices has no NVIDIA GPU major.
var ErrDriverNotLoaded = errors.New("is the NVIDIA kernel driver loaded?")

// ReadDriver reads the driver's majors from <procRoot>/devices and its
// device file mode from <procRoot>/driver/nvidia/params.
func ReadDriver(procRoot string) (Driver, error) {
	d := Driver{ProcRoot: procRoot, FileMode: defaultDeviceFileMode}
	path := filepath.Join(procRoot, "devices")
	majors, err := readCharMajors(path)
	if err != nil {
		return d, fmt.Errorf("read NVIDIA device majors: %w", err)
	}
	d.GPUMajor = majors[procDevicesGPU]
	if d.GPUMajor == 0 {
		d.GPUMajor = majors[procDevicesGPUNewer]
	}
	if d.GPUMajor == 0 {
		return d, fmt.Errorf("read NVIDIA device majors: %s has no %q or %q character device: %w", path, procDevicesGPU, procDevicesGPUNewer, ErrDriverNotLoaded)
	}
	d.UVMMajor = majors[procDevicesUVM]
	d.CapsMajor = majors[procDevicesCaps]
	if mode, ok, err := readDeviceFileMode(filepath.Join(procRoot, "driver", "nvidia", "params")); err != nil {
		return d, err
	} else if ok {
		d.FileMode = mode
	}
	return d, nil
}

// GPU is the device node of the GPU with the given minor number.
func (d Driver) GPU(minor int) DeviceNode {
	return DeviceNode{Path: GPUDeviceNode(minor), Major: d.GPUMajor, Minor: int64(minor), FileMode: d.FileMode}
}

// Control returns the driver's nodes every GPU container needs:
// /dev/nvidiactl, /dev/nvidia-uvm and /dev/nvidia-uvm-tools (CUDA needs UVM).
func (d Driver) Control() ([]DeviceNode, error) {
	if d.UVMMajor == 0 {
		return nil, fmt.Errorf("%s has no %q character device: load the nvidia-uvm module (nvidia-modprobe -u, or modprobe nvidia-uvm)", filepath.Join(d.ProcRoot, "devices"), procDevicesUVM)
	}
	return []DeviceNode{
		{Path: "/dev/nvidiactl", Major: d.GPUMajor, Minor: controlMinor, FileMode: d.FileMode},
		{Path: "/dev/nvidia-uvm", Major: d.UVMMajor, Minor: uvmMinor, FileMode: d.FileMode},
		{Path: "/dev/nvidia-uvm-tools", Major: d.UVMMajor, Minor: uvmToolsMinor, FileMode: d.FileMode},
	}, nil
}

// MIGCapabilities returns the capability device nodes that give a
// container access to one MIG device: the GPU instance's and the compute
// instance's /dev/nvidia-caps/nvidia-cap<N>. Minor and mode come from the
// driver's capability files, e.g.
// /proc/driver/nvidia/capabilities/gpu0/mig/gi3/access and .../gi3/ci0/access,
// each holding "DeviceFileMinor: N" and "DeviceFileMode: M" (M in decimal,
// e.g. 292 for 0444), the major from the nvidia-caps line of /proc/devices.
func (d Driver) MIGCapabilities(gpuMinor, gpuInstanceID, computeInstanceID int) ([]DeviceNode, error) {
	if d.CapsMajor == 0 {
		return nil, fmt.Errorf("MIG capability nodes: %s has no %q character device: is the NVIDIA driver loaded with MIG support?", filepath.Join(d.ProcRoot, "devices"), procDevicesCaps)
	}
	gi := filepath.Join(d.ProcRoot, "driver", "nvidia", "capabilities", fmt.Sprintf("gpu%d", gpuMinor), "mig", fmt.Sprintf("gi%d", gpuInstanceID))
	ci := filepath.Join(gi, fmt.Sprintf("ci%d", computeInstanceID))
	var out []DeviceNode
	for _, dir := range []string{gi, ci} {
		c, err := readCapability(filepath.Join(dir, "access"))
		if err != nil {
			return nil, err
		}
		out = append(out, MIGCapabilityNode(d.CapsMajor, c.minor, c.mode))
	}
	return out, nil
}

// MIGCapabilityNode is the capability device node with the given numbers.
func MIGCapabilityNode(major, minor int64, mode os.FileMode) DeviceNode {
	return DeviceNode{Path: fmt.Sprintf("/dev/nvidia-caps/nvidia-cap%d", minor), Major: major, Minor: minor, FileMode: mode}
}

// GPUDeviceNode is the path of the device node of the GPU with the given
// minor number.
func GPUDeviceNode(minor int) string { return fmt.Sprintf("/dev/nvidia%d", minor) }

// readCharMajors parses the "Character devices:" part of /proc/devices.
func readCharMajors(path string) (map[string]int64, error) {
	lines, err := readLines(path)
	if err != nil {
		return nil, err
	}
	majors := map[string]int64{}
	inChar := false
	for _, line := range lines {
		line = strings.TrimSpace(line)
		switch {
		case line == "Character devices:":
			inChar = true
			continue
		case strings.HasSuffix(line, ":"):
			inChar = false
			continue
		case !inChar:
			continue
		}
		fields := strings.Fields(line)
		if len(fields) != 2 {
			continue
		}
		if n, err := strconv.ParseInt(fields[0], 10, 64); err == nil && n > 0 {
			if _, seen := majors[fields[1]]; !seen {
				majors[fields[1]] = n
			}
		}
	}
	return majors, nil
}

// readDeviceFileMode reads the driver's DeviceFileMode parameter; ok is
// false when the file or the line is missing.
func readDeviceFileMode(path string) (mode os.FileMode, ok bool, err error) {
	lines, err := readLines(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("read NVIDIA driver parameters: %w", err)
	}
	for _, line := range lines {
		key, value, found := strings.Cut(line, ":")
		if !found || strings.TrimPrefix(strings.TrimSpace(key), "NVreg_") != "DeviceFileMode" {
			continue
		}
		m, err := parseMode(strings.TrimSpace(value))
		if err != nil {
			return 0, false, fmt.Errorf("read NVIDIA driver parameters %s: %w", path, err)
		}
		return m, true, nil
	}
	return 0, false, nil
}

type capability struct {
	minor int64
	mode  os.FileMode
}

func readCapability(path string) (capability, error) {
	lines, err := readLines(path)
	if err != nil {
		return capability{}, fmt.Errorf("read MIG capability: %w", err)
	}
	var c capability
	var haveMinor, haveMode bool
	for _, line := range lines {
		key, value, found := strings.Cut(line, ":")
		if !found {
			continue
		}
		value = strings.TrimSpace(value)
		switch strings.TrimSpace(key) {
		case "DeviceFileMinor":
			n, err := strconv.ParseInt(value, 10, 64)
			if err != nil || n < 0 {
				return c, fmt.Errorf("read MIG capability %s: DeviceFileMinor %q is not a number", path, value)
			}
			c.minor, haveMinor = n, true
		case "DeviceFileMode":
			m, err := parseMode(value)
			if err != nil {
				return c, fmt.Errorf("read MIG capability %s: %w", path, err)
			}
			c.mode, haveMode = m, true
		}
	}
	switch {
	case !haveMinor:
		return c, fmt.Errorf("read MIG capability %s: no DeviceFileMinor line", path)
	case !haveMode:
		return c, fmt.Errorf("read MIG capability %s: no DeviceFileMode line", path)
	}
	return c, nil
}

// parseMode parses a mode as the driver prints it: in decimal (292 is 0444).
func parseMode(value string) (os.FileMode, error) {
	n, err := strconv.ParseUint(value, 10, 32)
	if err != nil || n > 0o777 {
		return 0, fmt.Errorf("DeviceFileMode %q is not a decimal permission mode", value)
	}
	return os.FileMode(n), nil
}

// readLines reads a small /proc file, bounded so that a file that never
// ends cannot stall the plugin.
func readLines(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	var lines []string
	s := bufio.NewScanner(io.LimitReader(f, maxProcFile))
	for s.Scan() {
		lines = append(lines, s.Text())
	}
	if err := s.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return lines, nil
}
