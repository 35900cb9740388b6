package sharing

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	configapi "github.com/tessera-gpu/tessera/api/config/v1alpha1"
)

// TimeSlicer sets a GPU's time slice. The real one runs nvidia-smi; simulated
// nodes keep it in memory (hardware.SimulatedTimeSlicer).
type TimeSlicer interface {
	SetTimeSlice(ctx context.Context, gpuUUID string, interval configapi.TimeSliceInterval) error
}

// NvidiaSMI sets time slices with "nvidia-smi compute-policy".
type NvidiaSMI struct {
	// Binary is nvidia-smi, under the driver root.
	Binary string
	// Env is added to this process's environment to run Binary: the
	// driver's library and binary directories (driverroot.Root.Env).
	Env []string
}

// timeSliceValues are nvidia-smi's --set-timeslice values.
var timeSliceValues = map[configapi.TimeSliceInterval]string{
	configapi.DefaultTimeSlice: "0",
	configapi.ShortTimeSlice:   "1",
	configapi.MediumTimeSlice:  "2",
	configapi.LongTimeSlice:    "3",
}

// smiTimeout bounds one nvidia-smi run: it runs under the node's state lock,
// and a hung one must not hold every other claim of the node.
const smiTimeout = 30 * time.Second

// SetTimeSlice runs nvidia-smi compute-policy -i <uuid> --set-timeslice=<n>,
// for at most smiTimeout.
func (n NvidiaSMI) SetTimeSlice(ctx context.Context, gpuUUID string, interval configapi.TimeSliceInterval) error {
	v, ok := timeSliceValues[interval]
	if !ok {
		return fmt.Errorf("set time slice of GPU %s: unknown interval %q", gpuUUID, interval)
	}
	ctx, cancel := context.WithTimeout(ctx, smiTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, n.Binary, "compute-policy", "-i", gpuUUID, "--set-timeslice="+v)
	cmd.Env = append(os.Environ(), n.Env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("set time slice %s on GPU %s: %w: %s", interval, gpuUUID, err, strings.TrimSpace(string(out)))
	}
	return nil
}
