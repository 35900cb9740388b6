// Package nvml is the only code in Tessera that talks to NVML. It turns what
// NVML reports into a plain inventory.Node and offers the few MIG operations
// the node-side prepare path needs. The same code drives real NVML (through
// github.com/NVIDIA/go-nvml) and go-nvml's mock servers, corrected to the
// hardware's MIG geometry by the mock subpackage.
package nvml

import (
	"context"
	"errors"
	"fmt"

	gonvml "github.com/NVIDIA/go-nvml/pkg/nvml"
	"k8s.io/klog/v2"

	"github.com/tessera-gpu/tessera/pkg/inventory"
)

// Library is the narrow seam through which everything above reaches NVML.
type Library interface {
	// Discover reports the node's GPUs.
	Discover(ctx context.Context) (inventory.Node, error)
	// MIGMode reports a GPU's MIG mode; off for a GPU without MIG.
	MIGMode(ctx context.Context, gpu int) (MIGMode, error)
	// SetMIGMode switches MIG mode on one GPU where it differs. It fails
	// with ErrResetRequired where the change would only take effect after
	// a GPU reset, and from then on for every change of that GPU's mode;
	// with an Error of ERROR_IN_USE where the GPU is busy. A change that
	// fails leaves the mode as it was.
	SetMIGMode(ctx context.Context, gpu int, enabled bool) error
	// CreateMIGDevice creates a GPU instance of the profile at exactly the
	// placement, and one compute instance spanning it.
	CreateMIGDevice(ctx context.Context, gpu, profileID int, placement inventory.Placement) (MIGDevice, error)
	// DestroyMIGDevice destroys the GPU instance and its compute instances.
	// Destroying an instance that no longer exists is not an error.
	DestroyMIGDevice(ctx context.Context, gpu, gpuInstanceID int) error
	// MIGDevices lists the GPU instances that exist on one GPU.
	MIGDevices(ctx context.Context, gpu int) ([]MIGDevice, error)
	// Shutdown releases NVML.
	Shutdown() error
}

// DiscoverNode discovers the node's GPUs at the start of the node side: the
// one discovery that the preparer, the health monitor and the publication
// start from. GPUs lost while others answer are logged, and the others are
// served; an error that leaves no GPU usable is returned.
func DiscoverNode(ctx context.Context, lib Library) (inventory.Node, error) {
	node, err := lib.Discover(ctx)
	if err := Usable(err); err != nil {
		return node, fmt.Errorf("discover GPUs: %w", err)
	}
	if err != nil {
		klog.FromContext(ctx).Error(err, "Some GPUs are lost; serving the others")
	}
	return node, nil
}

// MIGDevice is one GPU instance (with its compute instance) on a GPU.
type MIGDevice struct {
	GPUIndex          int                 `json:"gpuIndex"`
	ProfileID         int                 `json:"profileID"`
	Placement         inventory.Placement `json:"placement"`
	GPUInstanceID     int                 `json:"gpuInstanceID"`
	ComputeInstanceID int                 `json:"computeInstanceID"`
	// UUID is the MIG device's UUID; empty when NVML does not report one.
	UUID string `json:"uuid,omitempty"`
}

// MIGMode is a GPU's MIG mode as NVML reports it.
type MIGMode struct {
	// Enabled is the current mode.
	Enabled bool
	// PendingEnabled is the mode the GPU switches to at its next reset;
	// it differs from Enabled while a change waits for a reset.
	PendingEnabled bool
}

// ErrResetRequired is returned by SetMIGMode when the GPU needs a reset for the
// new mode to take effect.
var ErrResetRequired = errors.New("MIG mode change needs a GPU reset")

// Error is an NVML return code with the operation that produced it.
type Error struct {
	Op     string
	Return gonvml.Return
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s: %s", e.Op, gonvml.ErrorString(e.Return))
}

// IsReturn reports whether err carries the given NVML return code.
func IsReturn(err error, ret gonvml.Return) bool {
	var e *Error
	return errors.As(err, &e) && e.Return == ret
}

func check(ret gonvml.Return, format string, args ...any) error {
	if ret == gonvml.SUCCESS {
		return nil
	}
	return &Error{Op: fmt.Sprintf(format, args...), Return: ret}
}
