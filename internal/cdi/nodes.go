package cdi

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// ControlDeviceNodes are the driver's device nodes every GPU container needs.
var ControlDeviceNodes = []string{"/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"}

// GPUDeviceNode is the device node of the GPU with the given minor number.
func GPUDeviceNode(minor int) string { return fmt.Sprintf("/dev/nvidia%d", minor) }

// MIGCapabilityDeviceNodes returns the capability device nodes that give a
// container access to one MIG device: the GPU instance's and the compute
// instance's /dev/nvidia-caps/nvidia-cap<N>. The minors N come from the
// driver's capability files under procRoot (the host's /proc, or the
// driver root's), e.g.
// /proc/driver/nvidia/capabilities/gpu0/mig/gi3/access and
// .../gi3/ci0/access, each holding a line "DeviceFileMinor: N".
func MIGCapabilityDeviceNodes(procRoot string, gpuMinor, gpuInstanceID, computeInstanceID int) ([]string, error) {
	gi := filepath.Join(procRoot, "driver", "nvidia", "capabilities", fmt.Sprintf("gpu%d", gpuMinor), "mig", fmt.Sprintf("gi%d", gpuInstanceID))
	ci := filepath.Join(gi, fmt.Sprintf("ci%d", computeInstanceID))
	var out []string
	for _, dir := range []string{gi, ci} {
		minor, err := capabilityMinor(filepath.Join(dir, "access"))
		if err != nil {
			return nil, err
		}
		out = append(out, fmt.Sprintf("/dev/nvidia-caps/nvidia-cap%d", minor))
	}
	return out, nil
}

func capabilityMinor(path string) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("read MIG capability: %w", err)
	}
	defer func() { _ = f.Close() }()
	s := bufio.NewScanner(f)
	for s.Scan() {
		key, value, ok := strings.Cut(s.Text(), ":")
		if !ok || strings.TrimSpace(key) != "DeviceFileMinor" {
			continue
		}
		n, err := strconv.Atoi(strings.TrimSpace(value))
		if err != nil {
			return 0, fmt.Errorf("read MIG capability %s: DeviceFileMinor %q is not a number", path, strings.TrimSpace(value))
		}
		return n, nil
	}
	if err := s.Err(); err != nil {
		return 0, fmt.Errorf("read MIG capability %s: %w", path, err)
	}
	return 0, fmt.Errorf("read MIG capability %s: no DeviceFileMinor line", path)
}
