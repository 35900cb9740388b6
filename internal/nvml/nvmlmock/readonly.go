package nvmlmock

import (
	"reflect"
	"regexp"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
)

// changing matches the mock function fields of the NVML calls that change a
// GPU: nvml.h's setters (nvmlDeviceSet*, e.g. SetMigMode, SetComputeMode),
// creations and destructions of GPU and compute instances, resets and
// clears (nvmlDeviceResetApplicationsClocks, nvmlDeviceClearEccErrorCounts),
// and the calls that change what the driver holds (nvmlDeviceModifyDrainState,
// nvmlDeviceRemoveGpu, nvmlDeviceDiscoverGpus). Event sets (EventSetCreate)
// only observe, and stay.
var changing = regexp.MustCompile(`^(Device|GpuInstance|ComputeInstance)?(Set|Create|Destroy|Reset|Clear|Modify|Remove|Discover)[A-Za-z0-9_]*Func$`)

// returnType is the type of NVML's return codes.
var returnType = reflect.TypeFor[nvml.Return]()

// ForbidChanges makes every NVML call that would change a GPU, on the
// server, its GPUs and their existing GPU and compute instances, call
// changed with the call's name and answer NO_PERMISSION (as NVML does for an
// unprivileged caller) without changing anything. A call whose mock was
// never set panics, as go-nvml's mocks do. For tests of code that must only
// read, e.g. a report run for the first time on a real GPU.
func (s *Server) ForbidChanges(changed func(call string)) {
	forbid(&s.Interface, changed)
	for _, d := range s.Devices {
		dev := d.(*server.Device)
		dev.Lock()
		forbid(&dev.Device, changed)
		for gi := range dev.GpuInstances {
			forbid(&gi.GpuInstance, changed)
			for ci := range gi.ComputeInstances {
				forbid(&ci.ComputeInstance, changed)
			}
		}
		dev.Unlock()
	}
}

// forbid replaces each set changing function field of the mock struct
// *mock with one that reports the call and returns NO_PERMISSION.
func forbid(mock any, changed func(call string)) {
	v := reflect.ValueOf(mock).Elem()
	for i := range v.NumField() {
		field, f := v.Type().Field(i), v.Field(i)
		if f.Kind() != reflect.Func || f.IsNil() || !changing.MatchString(field.Name) {
			continue
		}
		name := field.Name[:len(field.Name)-len("Func")]
		fn := f.Type()
		f.Set(reflect.MakeFunc(fn, func([]reflect.Value) []reflect.Value {
			changed(name)
			out := make([]reflect.Value, fn.NumOut())
			for j := range out {
				out[j] = reflect.Zero(fn.Out(j))
				if fn.Out(j) == returnType {
					out[j] = reflect.ValueOf(nvml.ERROR_NO_PERMISSION)
				}
			}
			return out
		}))
	}
}
