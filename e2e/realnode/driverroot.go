package realnode

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Majors of the fake driver root's device nodes. 195 is the NVIDIA driver's
// registered major; the UVM and capability majors are dynamic on a real host,
// so any number no other driver of the test machine uses will do.
const (
	GPUMajor  = 195
	CtlMinor  = 255
	UVMMajor  = 510
	CapsMajor = 511
)

// simulatedCapMinorsPerGPU is how many MIG capability minors each GPU gets:
// the plugin's simulated driver numbers the nodes of GPU g's instances
// 1000 + g*1000 + ... (internal/prepare.SimulatedDriver), below the next
// GPU's thousand.
const simulatedCapMinorsPerGPU = 1000

// MakeDriverRoot creates under root the device nodes of an NVIDIA driver with
// gpus GPUs: /dev/nvidia<i>, /dev/nvidiactl, /dev/nvidia-uvm(-tools) and the MIG
// capability nodes /dev/nvidia-caps/nvidia-cap<N> the simulated driver hands
// out. They are real character devices (nothing answers behind them), so that
// the runtime can stat them and create them in containers as CDI asks.
func MakeDriverRoot(root string, gpus int) error {
	dev := filepath.Join(root, "dev")
	caps := filepath.Join(dev, "nvidia-caps")
	if err := os.MkdirAll(caps, 0o755); err != nil {
		return fmt.Errorf("create fake driver root: %w", err)
	}
	nodes := map[string][2]uint32{
		"nvidiactl":        {GPUMajor, CtlMinor},
		"nvidia-uvm":       {UVMMajor, 0},
		"nvidia-uvm-tools": {UVMMajor, 1},
	}
	for i := range gpus {
		nodes[fmt.Sprintf("nvidia%d", i)] = [2]uint32{GPUMajor, uint32(i)}
		first := 1000 + i*simulatedCapMinorsPerGPU
		for m := first; m < first+simulatedCapMinorsPerGPU; m++ {
			nodes[fmt.Sprintf("nvidia-caps/nvidia-cap%d", m)] = [2]uint32{CapsMajor, uint32(m)}
		}
	}
	for name, mm := range nodes {
		path := filepath.Join(dev, name)
		// 0666 as the NVIDIA driver creates them (NVreg_DeviceFileMode), so
		// that non-root containers can open them.
		if err := unix.Mknod(path, unix.S_IFCHR|0o666, int(unix.Mkdev(mm[0], mm[1]))); err != nil && !os.IsExist(err) {
			return fmt.Errorf("create device node %s: %w", path, err)
		}
		if err := os.Chmod(path, 0o666); err != nil {
			return fmt.Errorf("chmod device node %s: %w", path, err)
		}
	}
	return nil
}
