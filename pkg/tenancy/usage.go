package tenancy

import (
	"maps"
	"slices"
	"strings"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
)

// Usage is what allocations hold, as Cost prices them.
type Usage struct {
	// Memory is held GPU memory in bytes: the GPU memory that the
	// allocations keep other tenants from using (Cost).
	Memory int64
	// Devices counts allocated devices per DeviceClass.
	Devices map[string]int64
}

// Status is u in the form of the tenant's status: memory in canonical form.
func (u Usage) Status() tenancyv1.Usage {
	return tenancyv1.Usage{GPUMemory: *resource.NewQuantity(u.Memory, resource.BinarySI), Devices: maps.Clone(u.Devices)}
}

// DeviceID names a published device.
type DeviceID struct{ Driver, Pool, Device string }

// DeviceMemory is the GPU memory of every Tessera device published in slices:
// a whole GPU's memory, a MIG partition's memory (its profile's), and a
// time-shared GPU's total. Only node-local slices of a pool named after their
// node count (Tessera's plugin publishes one pool per node, named after it),
// and of a pool only its newest generation: the API server lets a node write
// slices of its own node name only, so no node can change what another
// node's devices cost. Its own devices' memory is taken at no less than
// MemoryFloor: a node cannot make a device cheaper than the product or MIG
// profile it names.
func DeviceMemory(slices []*resourceapi.ResourceSlice) map[DeviceID]int64 {
	newest := map[string]int64{}
	for _, s := range slices {
		if trusted(s) {
			newest[s.Spec.Pool.Name] = max(newest[s.Spec.Pool.Name], s.Spec.Pool.Generation)
		}
	}
	out := map[DeviceID]int64{}
	for _, s := range slices {
		if !trusted(s) || s.Spec.Pool.Generation != newest[s.Spec.Pool.Name] {
			continue
		}
		for i := range s.Spec.Devices {
			d := &s.Spec.Devices[i]
			floor := MemoryFloor(d)
			if c, ok := d.Capacity[gpuapi.CapMemory]; ok || floor > 0 {
				out[DeviceID{s.Spec.Driver, s.Spec.Pool.Name, d.Name}] = max(c.Value.Value(), floor)
			}
		}
	}
	return out
}

// trusted reports whether s is a slice of Tessera's whose devices' memory
// may be believed: published by the node its pool is named after.
func trusted(s *resourceapi.ResourceSlice) bool {
	return s.Spec.Driver == gpuapi.DriverName && s.Spec.NodeName != nil && *s.Spec.NodeName == s.Spec.Pool.Name
}

// RequestClass is the DeviceClass that request ("gpu" or "gpu/small" for a
// firstAvailable alternative) names in spec, or "" if there is none.
func RequestClass(spec *resourceapi.ResourceClaimSpec, request string) string {
	name, sub, _ := strings.Cut(request, "/")
	for _, r := range spec.Devices.Requests {
		if r.Name != name {
			continue
		}
		if sub == "" && r.Exactly != nil {
			return r.Exactly.DeviceClassName
		}
		for _, s := range r.FirstAvailable {
			if s.Name == sub {
				return s.DeviceClassName
			}
		}
	}
	return ""
}

// State is where a claim stands in budget admission.
type State int

const (
	// Unallocated claims hold nothing.
	Unallocated State = iota
	// Ungated claims are allocated on devices without the admitted binding
	// condition (tenancy off on their nodes, or another driver).
	Ungated
	// Pending claims wait for the controller's decision.
	Pending
	// Admitted claims hold their devices against the budget.
	Admitted
	// Rejected claims were refused; the scheduler deallocates them.
	Rejected
)

// ClaimState says where claim stands: every allocated device that carries the
// admitted binding condition must have it set for the claim to be admitted;
// one rejected device rejects the claim.
func ClaimState(claim *resourceapi.ResourceClaim) State {
	if claim.Status.Allocation == nil {
		return Unallocated
	}
	gated, admitted := 0, 0
	for _, r := range claim.Status.Allocation.Devices.Results {
		if !slices.Contains(r.BindingConditions, tenancyv1.ConditionAdmitted) {
			continue
		}
		gated++
		st := DeviceStatus(claim, r)
		if st == nil {
			continue
		}
		if meta.IsStatusConditionTrue(st.Conditions, tenancyv1.ConditionRejected) {
			return Rejected
		}
		if meta.IsStatusConditionTrue(st.Conditions, tenancyv1.ConditionAdmitted) {
			admitted++
		}
	}
	switch {
	case gated == 0:
		return Ungated
	case admitted == gated:
		return Admitted
	default:
		return Pending
	}
}

// DeviceStatus is the claim's status entry for an allocated device, or nil.
func DeviceStatus(claim *resourceapi.ResourceClaim, r resourceapi.DeviceRequestAllocationResult) *resourceapi.AllocatedDeviceStatus {
	for i, d := range claim.Status.Devices {
		if d.Driver == r.Driver && d.Pool == r.Pool && d.Device == r.Device && sameShare(d.ShareID, r) {
			return &claim.Status.Devices[i]
		}
	}
	return nil
}

func sameShare(id *string, r resourceapi.DeviceRequestAllocationResult) bool {
	if r.ShareID == nil {
		return id == nil
	}
	return id != nil && *id == string(*r.ShareID)
}
