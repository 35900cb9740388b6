package gpu

import (
	"testing"

	"k8s.io/apimachinery/pkg/util/validation"
)

// Device names must be DNS labels: the API server rejects anything else.
func TestDeviceNamesAreDNSLabels(t *testing.T) {
	for name, want := range map[string]string{
		WholeDeviceName(0):                   "gpu-0",
		SharedDeviceName(7):                  "gpu-7-shared",
		MIGDeviceName(0, "1g.18gb", 3):       "gpu-0-mig-1g18gb-3",
		MIGDeviceName(1, "1g.18gb+me", 0):    "gpu-1-mig-1g18gb-me-0",
		MIGDeviceName(2, "1g.35gb+gfx", 4):   "gpu-2-mig-1g35gb-gfx-4",
		MIGDeviceName(3, "7g.141gb", 0):      "gpu-3-mig-7g141gb-0",
		CounterSetName(5):                    "gpu-5",
		MemorySliceCounter(6):                "memory-slice-6",
		MIGDeviceName(12, "MIG_4g.71gb", 16): "gpu-12-mig-mig-4g71gb-16",
	} {
		if name != want {
			t.Errorf("got %q, want %q", name, want)
		}
		if errs := validation.IsDNS1123Label(name); len(errs) > 0 {
			t.Errorf("%q is not a DNS label: %v", name, errs)
		}
	}
	if !IsMemorySliceCounter(MemorySliceCounter(0)) || IsMemorySliceCounter(CounterOFAEngines) {
		t.Error("IsMemorySliceCounter does not recognise the memory-slice counters")
	}
}

// Every shipped class maps to the device type it selects.
func TestEveryClassHasAType(t *testing.T) {
	for _, class := range Classes {
		if ClassType[class] == "" {
			t.Errorf("class %s selects no device type", class)
		}
	}
}
