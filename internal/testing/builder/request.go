package builder

import (
	"fmt"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
)

// RequestBuilder builds one device request of a claim, or one alternative of
// a firstAvailable request.
type RequestBuilder struct {
	name string
	sub  resourceapi.DeviceSubRequest
}

// MakeRequest starts a request named name for exactly one device of class,
// with the defaults the API server applies (allocation mode ExactCount, count
// 1), which the scheduler's allocator relies on.
func MakeRequest(name, class string) *RequestBuilder {
	return &RequestBuilder{name: name, sub: resourceapi.DeviceSubRequest{
		Name:            name,
		DeviceClassName: class,
		AllocationMode:  resourceapi.DeviceAllocationModeExactCount,
		Count:           1,
	}}
}

// Selector adds a CEL selector.
func (r *RequestBuilder) Selector(expression string) *RequestBuilder {
	r.sub.Selectors = append(r.sub.Selectors, resourceapi.DeviceSelector{
		CEL: &resourceapi.CELDeviceSelector{Expression: expression},
	})
	return r
}

// Profile selects MIG partitions of a profile, e.g. "1g.18gb".
func (r *RequestBuilder) Profile(profile string) *RequestBuilder {
	return r.Selector(fmt.Sprintf(`device.attributes[%q].%s == %q`, gpuapi.DriverName, gpuapi.AttrProfile, profile))
}

// PlacementStart selects MIG partitions that start at a memory slice.
func (r *RequestBuilder) PlacementStart(start int) *RequestBuilder {
	return r.Selector(fmt.Sprintf(`device.attributes[%q].%s == %d`, gpuapi.DriverName, gpuapi.AttrPlacementStart, start))
}

// Count asks for n devices.
func (r *RequestBuilder) Count(n int64) *RequestBuilder {
	r.sub.Count = n
	return r
}

// Memory asks for a share of a time-shared GPU's memory, e.g. "20Gi".
func (r *RequestBuilder) Memory(quantity string) *RequestBuilder {
	return r.capacity(gpuapi.CapMemory, resource.MustParse(quantity))
}

// Compute asks for a share of a time-shared GPU's compute, in percent of its
// multiprocessors.
func (r *RequestBuilder) Compute(percent int64) *RequestBuilder {
	return r.capacity(gpuapi.CapCompute, *resource.NewQuantity(percent, resource.DecimalSI))
}

func (r *RequestBuilder) capacity(name resourceapi.QualifiedName, q resource.Quantity) *RequestBuilder {
	if r.sub.Capacity == nil {
		r.sub.Capacity = &resourceapi.CapacityRequirements{Requests: map[resourceapi.QualifiedName]resource.Quantity{}}
	}
	r.sub.Capacity.Requests[name] = q
	return r
}

// Obj returns the request.
func (r *RequestBuilder) Obj() resourceapi.DeviceRequest {
	s := r.sub.DeepCopy()
	return resourceapi.DeviceRequest{Name: r.name, Exactly: &resourceapi.ExactDeviceRequest{
		DeviceClassName: s.DeviceClassName,
		Selectors:       s.Selectors,
		AllocationMode:  s.AllocationMode,
		Count:           s.Count,
		Tolerations:     s.Tolerations,
		Capacity:        s.Capacity,
	}}
}

// FirstAvailable returns a request named name that the scheduler satisfies
// with the first of the alternatives that fits; each alternative keeps its
// own name, the request's results name "<name>/<alternative>".
func FirstAvailable(name string, alternatives ...*RequestBuilder) resourceapi.DeviceRequest {
	req := resourceapi.DeviceRequest{Name: name}
	for _, a := range alternatives {
		req.FirstAvailable = append(req.FirstAvailable, *a.sub.DeepCopy())
	}
	return req
}
