package v1alpha1

import (
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Kinds of the opaque configuration.
const (
	// GPUConfigKind configures whole and shared GPUs.
	GPUConfigKind = "GPUConfig"
	// MIGConfigKind configures MIG partitions.
	MIGConfigKind = "MIGConfig"
)

// SharingStrategy is how the containers using one GPU share it.
type SharingStrategy string

const (
	// TimeSlicingStrategy lets CUDA contexts take turns on the GPU. It
	// enforces nothing: a share's memory and compute are only what the
	// scheduler counted.
	TimeSlicingStrategy SharingStrategy = "TimeSlicing"
	// MPSStrategy runs each claim's clients under an MPS control daemon of
	// the claim's own, whose defaults are the claim's pinned device memory
	// and active thread percentage, so that clients cannot undo them. It is
	// the default for shared GPUs.
	MPSStrategy SharingStrategy = "MPS"
)

// TimeSliceInterval is the length of a time slice, in the driver's terms.
type TimeSliceInterval string

// Time slices, as nvidia-smi compute-policy --set-timeslice names them.
const (
	// DefaultTimeSlice is the driver's default.
	DefaultTimeSlice TimeSliceInterval = "Default"
	// ShortTimeSlice favours latency.
	ShortTimeSlice TimeSliceInterval = "Short"
	// MediumTimeSlice is between the two.
	MediumTimeSlice TimeSliceInterval = "Medium"
	// LongTimeSlice favours throughput.
	LongTimeSlice TimeSliceInterval = "Long"
)

// GPUConfig configures whole GPUs (gpu.tessera.dev) and shares of
// time-shared GPUs (shared.gpu.tessera.dev).
//
// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object
type GPUConfig struct {
	metav1.TypeMeta `json:",inline"`

	// Sharing chooses how containers share the GPU. For a share of a
	// time-shared GPU the default is MPS, so that the share's memory and
	// compute are enforced; for a whole GPU the default is to leave the
	// GPU as the driver has it.
	// +optional
	Sharing *Sharing `json:"sharing,omitempty"`

	// AllowClaimSharing, in a DeviceClass's config, lets the claims of the
	// class set Sharing on shares of time-shared GPUs. Without it, only the
	// class sets how a share is shared: a claim that chose time slicing
	// would escape its MPS limits and change the time slice of everyone on
	// the GPU. A claim's own config may not set it.
	// +optional
	AllowClaimSharing bool `json:"allowClaimSharing,omitempty"`
}

// MIGConfig configures MIG partitions (mig.gpu.tessera.dev).
//
// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object
type MIGConfig struct {
	metav1.TypeMeta `json:",inline"`

	// Sharing chooses how the containers of the claim share the partition.
	// Only TimeSlicing is possible within a MIG partition here.
	// +optional
	Sharing *Sharing `json:"sharing,omitempty"`
}

// Sharing is a sharing strategy with its settings. Exactly the settings of
// the chosen strategy may be given.
//
// +kubebuilder:validation:XValidation:rule="!has(self.timeSlicing) || self.strategy == 'TimeSlicing'",message="timeSlicing needs strategy TimeSlicing"
// +kubebuilder:validation:XValidation:rule="!has(self.mps) || self.strategy == 'MPS'",message="mps needs strategy MPS"
type Sharing struct {
	// Strategy is TimeSlicing or MPS.
	// +kubebuilder:validation:Enum=TimeSlicing;MPS
	Strategy SharingStrategy `json:"strategy"`
	// TimeSlicing holds the settings of the TimeSlicing strategy.
	// +optional
	TimeSlicing *TimeSlicingConfig `json:"timeSlicing,omitempty"`
	// MPS holds the settings of the MPS strategy.
	// +optional
	MPS *MPSConfig `json:"mps,omitempty"`
}

// TimeSlicingConfig sets the GPU's time slice.
type TimeSlicingConfig struct {
	// Interval is Default, Short, Medium or Long.
	// +kubebuilder:validation:Enum=Default;Short;Medium;Long
	// +optional
	Interval TimeSliceInterval `json:"interval,omitempty"`
}

// MPSConfig sets MPS limits for clients whose allocation does not carry
// them. A share's consumed capacity always takes precedence: its memory
// becomes the pinned device memory limit and its compute the active thread
// percentage.
type MPSConfig struct {
	// DefaultActiveThreadPercentage limits each client to this share of
	// the GPU's threads, from 1 to 100.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100
	// +optional
	DefaultActiveThreadPercentage *int32 `json:"defaultActiveThreadPercentage,omitempty"`
	// DefaultPinnedDeviceMemoryLimit limits each client's device memory.
	// +optional
	DefaultPinnedDeviceMemoryLimit *resource.Quantity `json:"defaultPinnedDeviceMemoryLimit,omitempty"`
}
