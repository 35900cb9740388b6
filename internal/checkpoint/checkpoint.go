// Package checkpoint is the kubelet plugin's crash-safe record of the claims
// it has prepared: which devices each claim got, which MIG instances it
// created, which sharing it set up, and how far preparation got. Prepare
// records a claim before and after its devices are made, so that start-up
// can tell completed claims (served as before) from half-made ones (rolled
// back).
//
// Each change is one record appended to a journal and synced (one fsync);
// every so many records the whole checkpoint is written atomically (a temp
// file in the same directory, fsync, rename, fsync of the directory) and
// the journal emptied. The file is versioned; older versions are read and
// upgraded. A corrupt file or journal record (other than a torn last
// record, which was never acknowledged) or an unknown version is an error
// that names the file and never reads as "no claims" (which would make
// start-up destroy devices that are in use).
package checkpoint

import (
	"maps"
	"slices"

	"github.com/tessera-gpu/tessera/pkg/inventory"
)

// State is how far a claim got.
type State string

const (
	// PrepareStarted means the claim's devices are being made; some may exist.
	PrepareStarted State = "PrepareStarted"
	// PrepareCompleted means every device exists and the CDI spec is written.
	PrepareCompleted State = "PrepareCompleted"
	// UnprepareStarted means the claim's devices are being torn down.
	UnprepareStarted State = "UnprepareStarted"
)

// Checkpoint is the set of claims the plugin holds, by claim UID.
type Checkpoint struct {
	Claims map[string]*Claim `json:"claims"`
}

// New returns an empty checkpoint.
func New() *Checkpoint { return &Checkpoint{Claims: map[string]*Claim{}} }

// Claim is one claim the plugin holds.
type Claim struct {
	UID       string   `json:"uid"`
	Namespace string   `json:"namespace"`
	Name      string   `json:"name"`
	State     State    `json:"state"`
	Devices   []Device `json:"devices"`
}

// Device is one allocated device of a claim and what was made for it.
type Device struct {
	// Request, Pool and Device are the allocation result's.
	Request string `json:"request"`
	Pool    string `json:"pool"`
	Device  string `json:"device"`
	// Kind is gpu, mig or shared.
	Kind     string `json:"kind"`
	GPUIndex int    `json:"gpuIndex"`
	GPUUUID  string `json:"gpuUUID"`
	GPUMinor int    `json:"gpuMinor"`
	// MIG is set for MIG partitions.
	MIG *MIG `json:"mig,omitempty"`
	// Share is set for shares of a time-shared GPU.
	Share *Share `json:"share,omitempty"`
	// Sharing is the sharing set up for the device, when any.
	Sharing *Sharing `json:"sharing,omitempty"`
	// AdminAccess marks a whole GPU prepared for DRA admin access: the
	// scheduler does not count such an allocation, so it holds nothing
	// against other claims and nothing was set up on the GPU for it.
	AdminAccess bool `json:"adminAccess,omitempty"`
	// CDIDeviceIDs are what the kubelet hands to the runtime.
	CDIDeviceIDs []string `json:"cdiDeviceIDs,omitempty"`
}

// MIG is a MIG partition; Created tells whether its instance exists.
type MIG struct {
	ProfileID         int                 `json:"profileID"`
	Profile           string              `json:"profile"`
	Placement         inventory.Placement `json:"placement"`
	Created           bool                `json:"created"`
	GPUInstanceID     int                 `json:"gpuInstanceID"`
	ComputeInstanceID int                 `json:"computeInstanceID"`
	UUID              string              `json:"uuid,omitempty"`
}

// Share is one claim's share of a time-shared GPU.
type Share struct {
	ShareID     string `json:"shareID,omitempty"`
	MemoryBytes int64  `json:"memoryBytes"`
	// Compute is the per cent of the GPU's SMs.
	Compute int64 `json:"compute"`
}

// Sharing is the sharing strategy applied to a device.
type Sharing struct {
	// Strategy is TimeSlicing or MPS.
	Strategy string `json:"strategy"`
	// Interval is the time slice (TimeSlicing).
	Interval string `json:"interval,omitempty"`
	// ActiveThreadPercentage and PinnedMemoryLimitBytes are the MPS
	// client's limits; 0 means none.
	ActiveThreadPercentage int64 `json:"activeThreadPercentage,omitempty"`
	PinnedMemoryLimitBytes int64 `json:"pinnedMemoryLimitBytes,omitempty"`
}

// DeepCopy returns an independent copy.
func (c *Checkpoint) DeepCopy() *Checkpoint {
	out := New()
	for uid, claim := range c.Claims {
		out.Claims[uid] = claim.DeepCopy()
	}
	return out
}

// DeepCopy returns an independent copy.
func (c *Claim) DeepCopy() *Claim {
	out := *c
	out.Devices = make([]Device, len(c.Devices))
	for i, d := range c.Devices {
		out.Devices[i] = d.deepCopy()
	}
	return &out
}

func (d Device) deepCopy() Device {
	out := d
	if d.MIG != nil {
		m := *d.MIG
		out.MIG = &m
	}
	if d.Share != nil {
		s := *d.Share
		out.Share = &s
	}
	if d.Sharing != nil {
		s := *d.Sharing
		out.Sharing = &s
	}
	out.CDIDeviceIDs = slices.Clone(d.CDIDeviceIDs)
	return out
}

// UIDs returns the claim UIDs, sorted.
func (c *Checkpoint) UIDs() []string {
	return slices.Sorted(maps.Keys(c.Claims))
}
