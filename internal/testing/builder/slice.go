package builder

import (
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/utils/ptr"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
)

// SliceBuilder builds a ResourceSlice.
type SliceBuilder struct{ slice resourceapi.ResourceSlice }

// MakeSlice starts a slice named name of Tessera's driver for node, alone in a
// pool named after the node, as the kubelet plugin publishes it.
func MakeSlice(name, node string) *SliceBuilder {
	s := &SliceBuilder{}
	s.slice.Name = name
	s.slice.Spec = resourceapi.ResourceSliceSpec{
		Driver:   gpuapi.DriverName,
		Pool:     resourceapi.ResourcePool{Name: node, ResourceSliceCount: 1},
		NodeName: ptr.To(node),
	}
	return s
}

// Driver publishes the slice for another driver than Tessera's (e.g. to compare
// layouts).
func (s *SliceBuilder) Driver(name string) *SliceBuilder {
	s.slice.Spec.Driver = name
	return s
}

// NoNode makes the slice's nodeName empty, as a slice no node publishes has it.
func (s *SliceBuilder) NoNode() *SliceBuilder {
	s.slice.Spec.NodeName = nil
	return s
}

// Counters adds counter sets that the pool's devices consume.
func (s *SliceBuilder) Counters(sets ...resourceapi.CounterSet) *SliceBuilder {
	s.slice.Spec.SharedCounters = append(s.slice.Spec.SharedCounters, sets...)
	return s
}

// Pool puts the slice into a pool of count slices at a generation.
func (s *SliceBuilder) Pool(name string, generation, count int64) *SliceBuilder {
	s.slice.Spec.Pool = resourceapi.ResourcePool{Name: name, Generation: generation, ResourceSliceCount: count}
	return s
}

// Device adds devices; see MakeDevice.
func (s *SliceBuilder) Device(devices ...resourceapi.Device) *SliceBuilder {
	s.slice.Spec.Devices = append(s.slice.Spec.Devices, devices...)
	return s
}

// Obj returns the slice.
func (s *SliceBuilder) Obj() *resourceapi.ResourceSlice {
	return s.slice.DeepCopy()
}

// DeviceBuilder builds one device of a slice.
type DeviceBuilder struct{ device resourceapi.Device }

// MakeDevice starts a device named name, without attributes or capacity.
func MakeDevice(name string) *DeviceBuilder {
	return &DeviceBuilder{device: resourceapi.Device{Name: name}}
}

// Attr sets a string attribute of Tessera's (e.g. gpuapi.AttrType).
func (d *DeviceBuilder) Attr(name, value string) *DeviceBuilder {
	return d.attr(name, resourceapi.DeviceAttribute{StringValue: ptr.To(value)})
}

// IntAttr sets an integer attribute of Tessera's (e.g. gpuapi.AttrIndex).
func (d *DeviceBuilder) IntAttr(name string, value int64) *DeviceBuilder {
	return d.attr(name, resourceapi.DeviceAttribute{IntValue: ptr.To(value)})
}

func (d *DeviceBuilder) attr(name string, value resourceapi.DeviceAttribute) *DeviceBuilder {
	if d.device.Attributes == nil {
		d.device.Attributes = map[resourceapi.QualifiedName]resourceapi.DeviceAttribute{}
	}
	d.device.Attributes[resourceapi.QualifiedName(name)] = value
	return d
}

// Capacity sets a capacity of Tessera's (e.g. gpuapi.CapMemory) to a quantity.
func (d *DeviceBuilder) Capacity(name, quantity string) *DeviceBuilder {
	if d.device.Capacity == nil {
		d.device.Capacity = map[resourceapi.QualifiedName]resourceapi.DeviceCapacity{}
	}
	d.device.Capacity[resourceapi.QualifiedName(name)] = resourceapi.DeviceCapacity{Value: resource.MustParse(quantity)}
	return d
}

// Consumes makes the device consume counters of a counter set.
func (d *DeviceBuilder) Consumes(set string, counters map[string]resourceapi.Counter) *DeviceBuilder {
	d.device.ConsumesCounters = append(d.device.ConsumesCounters, resourceapi.DeviceCounterConsumption{CounterSet: set, Counters: counters})
	return d
}

// Gated gives the device tenancy's binding conditions, as the plugin
// publishes it with --tenancy.
func (d *DeviceBuilder) Gated() *DeviceBuilder {
	d.device.BindingConditions = []string{tenancyv1.ConditionAdmitted}
	d.device.BindingFailureConditions = []string{tenancyv1.ConditionRejected}
	return d
}

// Obj returns the device.
func (d *DeviceBuilder) Obj() resourceapi.Device {
	return *d.device.DeepCopy()
}
