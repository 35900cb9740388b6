// Package inventory holds the plain description of a node's GPUs that
// discovery (internal/nvml) fills in and the pure packages (partition,
// resourceslice) consume. It has no behaviour beyond small accessors, so that
// tests can build inventories by hand and every consumer sees the same value.
package inventory

import "sort"

// Node is what discovery found on one node.
type Node struct {
	// DriverVersion is the NVIDIA kernel driver version, e.g. "550.54.15".
	DriverVersion string `json:"driverVersion"`
	// CUDADriverVersion is the CUDA version the driver supports, e.g. "12.4".
	CUDADriverVersion string `json:"cudaDriverVersion"`
	// GPUs are sorted by Index.
	GPUs []GPU `json:"gpus"`
}

// GPU is one physical GPU as NVML reports it.
type GPU struct {
	Index int    `json:"index"`
	Minor int    `json:"minor"`
	UUID  string `json:"uuid"`
	// ProductName is NVML's device name, e.g. "NVIDIA H200".
	ProductName string `json:"productName"`
	// Brand is NVML's brand in lower case, e.g. "nvidia" or "tesla".
	Brand string `json:"brand"`
	// Architecture in lower case, e.g. "hopper".
	Architecture string `json:"architecture"`
	// CUDAComputeCapability as "major.minor", e.g. "9.0".
	CUDAComputeCapability string `json:"cudaComputeCapability"`
	// MemoryBytes is the total framebuffer memory.
	MemoryBytes uint64 `json:"memoryBytes"`
	// Multiprocessors is the number of SMs; 0 when NVML does not tell.
	Multiprocessors int `json:"multiprocessors,omitempty"`
	// PCIBusID in the canonical "0000:3b:00.0" form; empty when unknown.
	PCIBusID string `json:"pciBusID,omitempty"`
	// PCIeRoot is the PCIe root complex, e.g. "pci0000:00"; empty when unknown.
	PCIeRoot string `json:"pcieRoot,omitempty"`
	// MIG describes the GPU's Multi-Instance GPU support.
	MIG MIG `json:"mig"`
}

// MIG is a GPU's Multi-Instance GPU capability and geometry.
type MIG struct {
	// Capable is true when the GPU supports MIG at all.
	Capable bool `json:"capable"`
	// Enabled is the current MIG mode.
	Enabled bool `json:"enabled"`
	// ToggleWithoutReset is true when MIG mode can be switched without a GPU
	// reset, so that partitions can be created on demand on a GPU whose MIG
	// mode is off.
	ToggleWithoutReset bool `json:"toggleWithoutReset"`
	// Profiles lists every GPU-instance profile with its possible placements,
	// as NVML reports them, sorted by ID.
	Profiles []MIGProfile `json:"profiles,omitempty"`
}

// MIGProfile is one GPU-instance profile.
type MIGProfile struct {
	// ID is NVML's GPU-instance profile index (nvml.GPU_INSTANCE_PROFILE_*).
	ID int `json:"id"`
	// Name is the profile name as NVML reports it, without any "MIG " prefix,
	// e.g. "1g.18gb" or "1g.18gb+me".
	Name string `json:"name"`
	// SliceCount is the number of compute slices.
	SliceCount int `json:"sliceCount"`
	// InstanceCount is the most instances of this profile the GPU can hold.
	InstanceCount   int    `json:"instanceCount"`
	MemoryBytes     uint64 `json:"memoryBytes"`
	Multiprocessors int    `json:"multiprocessors"`
	CopyEngines     int    `json:"copyEngines"`
	Decoders        int    `json:"decoders"`
	Encoders        int    `json:"encoders"`
	JPEGEngines     int    `json:"jpegEngines"`
	OFAEngines      int    `json:"ofaEngines"`
	// Placements are the possible placements in memory slices, sorted by Start.
	Placements []Placement `json:"placements"`
}

// Placement is a run of memory slices [Start, Start+Size).
type Placement struct {
	Start int `json:"start"`
	Size  int `json:"size"`
}

// End returns the first memory slice after the placement.
func (p Placement) End() int { return p.Start + p.Size }

// Overlaps reports whether two placements share a memory slice.
func (p Placement) Overlaps(o Placement) bool {
	return p.Start < o.End() && o.Start < p.End()
}

// MemorySlices returns the number of memory slices of the GPU: the end of the
// furthest placement of any profile.
func (m MIG) MemorySlices() int {
	n := 0
	for _, p := range m.Profiles {
		for _, pl := range p.Placements {
			n = max(n, pl.End())
		}
	}
	return n
}

// Profile returns the profile with the given NVML ID.
func (m MIG) Profile(id int) (MIGProfile, bool) {
	for _, p := range m.Profiles {
		if p.ID == id {
			return p, true
		}
	}
	return MIGProfile{}, false
}

// ProfileByName returns the profile with the given name.
func (m MIG) ProfileByName(name string) (MIGProfile, bool) {
	for _, p := range m.Profiles {
		if p.Name == name {
			return p, true
		}
	}
	return MIGProfile{}, false
}

// Sort puts GPUs, profiles and placements into their canonical order so that
// everything derived from a Node is deterministic.
func (n *Node) Sort() {
	sort.Slice(n.GPUs, func(i, j int) bool { return n.GPUs[i].Index < n.GPUs[j].Index })
	for i := range n.GPUs {
		profiles := n.GPUs[i].MIG.Profiles
		sort.Slice(profiles, func(a, b int) bool { return profiles[a].ID < profiles[b].ID })
		for _, p := range profiles {
			sort.Slice(p.Placements, func(a, b int) bool { return p.Placements[a].Start < p.Placements[b].Start })
		}
	}
}
