package scheduler

import (
	"math"
	"slices"
	"testing"

	draapi "k8s.io/dynamic-resource-allocation/api"
	"k8s.io/dynamic-resource-allocation/structured"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
)

// TestFinalPlacementOrder: the final order ranks exactly the placements of
// the profile that are not allocated, those that fit first, and where the demand asks only for whole-GPU
// partitions it keeps an empty GPU whole: on two GPUs, GPU 1 holding a 3g
// partition, a 1g partition goes to GPU 1. It declines what the choice
// declines: a request that selects a whole GPU, and another driver's
// devices.
func TestFinalPlacementOrder(t *testing.T) {
	const node = "n"
	alloc := emptyAllocated()
	alloc.AllocatedDevices.Insert(structured.MakeDeviceID(gpuapi.DriverName, node, gpuapi.MIGDeviceName(1, "3g.20gb", 4)))
	sl := migNode(node, 2)
	d := NewDemand()
	for range 3000 {
		d.Observe("7g.40gb", 1)
	}
	d.Observe("1g.5gb", 1)
	choice := NewFinalChoice(d)
	final := choice.Order
	v := viewOf(t, sl, node, alloc, "1g.5gb")
	var selected []int
	fitting := 0
	for i := range v.devices {
		if v.selectable(i) {
			selected = append(selected, i)
			if v.fits(i) {
				fitting++
			}
		}
	}
	got := final(gpuapi.DriverName, v.devices, v.left, v.selectable)
	if !slices.Equal(slices.Sorted(slices.Values(got)), selected) {
		t.Fatalf("final order %v, want a permutation of the selected placements %v", got, selected)
	}
	for k, i := range got {
		if v.fits(i) != (k < fitting) {
			t.Fatalf("final order %v: the %d placements that fit are not first", got, fitting)
		}
	}
	if name := v.devices[got[0]].Name.String(); name[:len("gpu-1-")] != "gpu-1-" {
		t.Errorf("final order puts %s first, want a placement on GPU 1 (GPU 0 kept whole for the 7g partitions asked for)", name)
	}
	whole := func(i int) bool {
		typ := v.devices[i].Attributes[gpuapi.AttrType].StringValue
		return typ != nil && *typ == gpuapi.TypeGPU
	}
	if got := final(gpuapi.DriverName, v.devices, v.left, whole); got != nil {
		t.Errorf("a whole-GPU request: final order %v, want nil (published order)", got)
	}
	if got := final("other.example.com", v.devices, v.left, v.selectable); got != nil {
		t.Errorf("another driver: final order %v, want nil", got)
	}
	if made, moved := choice.Made(); made != 1 || moved > made {
		t.Errorf("counted %d choices made, %d moved; want 1 made (declined requests do not count)", made, moved)
	}
	var none []*draapi.Device
	if got := final(gpuapi.DriverName, none, nil, func(int) bool { return false }); got != nil {
		t.Errorf("no devices: final order %v, want nil", got)
	}
}

// TestDemandShares: before anything is asked for every class is alike;
// then each class's share is its part of the decayed counts, the shares sum
// to 1, and a class never asked for has none.
func TestDemandShares(t *testing.T) {
	if got := NewDemand().Weights().Share("1g.18gb"); got != 1 {
		t.Errorf("before anything: share %v, want 1", got)
	}
	d := threeOneTwo()
	w := d.Weights()
	want := map[string]float64{"1g.18gb": 0.5, "3g.71gb": 1.0 / 6, gpuapi.TypeGPU: 1.0 / 3, gpuapi.TypeShared: 0}
	for class, v := range want {
		if got := w.Share(class); math.Abs(got-v) > 0.03 {
			t.Errorf("%s: share %.3f, want %.3f", class, got, v)
		}
	}
	sum := 0.0
	for class := range w.Classes() {
		sum += w.Share(class)
	}
	if math.Abs(sum-1) > 1e-9 {
		t.Errorf("shares sum to %v", sum)
	}
}
