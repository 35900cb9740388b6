package scheduler

import (
	"sync"

	resourceapi "k8s.io/api/resource/v1"
	draapi "k8s.io/dynamic-resource-allocation/api"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/pkg/partition"
)

// MIGPlacementOrder is tessera-scheduler's choice among a node's free MIG
// placements. tessera-scheduler registers it with its patched allocator
// (research/patches/allocator/placement-choice.patch, draapi.DeviceOrder),
// which asks it for every request of one device on every pool. For a request
// that selects only Tessera MIG partitions it orders them with
// partition.BestFit, the rule the packing benchmark replays; as soon as the
// request selects any other device (a whole GPU, a share), or for another
// driver, it declines (nil), and the allocator takes the first device that
// fits in published order, as kube-scheduler does.
//
// Every free device of the pool is passed to the rule, none is hidden: the
// order only changes which candidate the allocator tries first, and the
// allocator still checks each one it tries.
func MIGPlacementOrder(driver string, devices []*draapi.Device, left map[string]map[string]int64, selectable func(int) bool) []int {
	return migPlacementOrder(nil, driver, devices, left, selectable)
}

// MIGPlacementOrderFor is MIGPlacementOrder with the classes weighed by the
// demand d has learned (partition.Left.BestFitWeighted), as the weights stand
// when the allocator asks: tessera-scheduler registers it, and gives the
// Score plugin the same d (WithDemand).
func MIGPlacementOrderFor(d *Demand) func(driver string, devices []*draapi.Device, left map[string]map[string]int64, selectable func(int) bool) []int {
	return func(driver string, devices []*draapi.Device, left map[string]map[string]int64, selectable func(int) bool) []int {
		return migPlacementOrder(d, driver, devices, left, selectable)
	}
}

// migPlacementOrder is MIGPlacementOrder weighed by demand (nil: unweighted).
func migPlacementOrder(demand *Demand, driver string, devices []*draapi.Device, left map[string]map[string]int64, selectable func(int) bool) []int {
	if driver != gpuapi.DriverName {
		return nil
	}
	var candidates []int
	for i, d := range devices {
		if !selectable(i) {
			continue
		}
		if typ := d.Attributes[gpuapi.AttrType].StringValue; typ == nil || *typ != gpuapi.TypeMIG {
			return nil
		}
		candidates = append(candidates, i)
	}
	if len(candidates) < 2 {
		return nil
	}
	choices := make([]partition.Choice, len(devices))
	conversions.Lock()
	if len(conversions.of) > maxConversions {
		clear(conversions.of)
	}
	for i, d := range devices {
		c, ok := conversions.of[d]
		if !ok {
			c = choiceOf(d)
			conversions.of[d] = c
		}
		choices[i] = c
	}
	conversions.Unlock()
	prepared := partition.Prepare(choices)
	var weights []float64
	if w := demand.Weights(); w.Version != 0 {
		weights = prepared.Weigh(w.Weight)
	}
	return prepared.Left(left).BestFitWeighted(candidates, weights)
}

// conversions keeps each device's conversion for as long as the allocator
// hands over the same device: tessera-scheduler's node cache keeps a node's
// converted slices from one pod to the next, and a device is never changed in
// place (an update is a new object). Starting again when full bounds it.
var conversions = struct {
	sync.Mutex
	of map[*draapi.Device]partition.Choice
}{of: map[*draapi.Device]partition.Choice{}}

const maxConversions = 1 << 16

// choiceOf reads a device's class (its MIG profile, else its type) and what it
// consumes of its counter set. Tessera's devices draw on one counter set each;
// a device without counters, or with a type the rule does not know, gets no
// class and so never counts as blocked.
func choiceOf(d *draapi.Device) partition.Choice {
	if len(d.ConsumesCounters) != 1 {
		return partition.Choice{}
	}
	class, ok := choiceClass(d.Attributes[gpuapi.AttrType].StringValue, d.Attributes[gpuapi.AttrProfile].StringValue)
	if !ok {
		return partition.Choice{}
	}
	consumption := d.ConsumesCounters[0]
	c := partition.Choice{Class: class, CounterSet: consumption.CounterSet.String(), Consumes: make(map[string]int64, len(consumption.Counters))}
	for name, n := range consumption.Counters {
		c.Consumes[name] = n.Value.Value()
	}
	return c
}

// choiceClass is a device's class for partition.BestFit: its MIG profile,
// else its type; ok is false for a device without a type, or a MIG device
// without a profile.
func choiceClass(typ, profile *string) (string, bool) {
	switch {
	case typ == nil:
		return "", false
	case *typ != gpuapi.TypeMIG:
		return *typ, true
	case profile == nil:
		return "", false
	}
	return *profile, true
}

// choiceOfDevice is choiceOf for a device as the API publishes it, which the
// Score plugin's model of the choice reads (mig.go): the same class, counter
// set and consumption.
func choiceOfDevice(d resourceapi.Device) partition.Choice {
	if len(d.ConsumesCounters) != 1 {
		return partition.Choice{}
	}
	class, ok := choiceClass(d.Attributes[gpuapi.AttrType].StringValue, d.Attributes[gpuapi.AttrProfile].StringValue)
	if !ok {
		return partition.Choice{}
	}
	consumption := d.ConsumesCounters[0]
	c := partition.Choice{Class: class, CounterSet: consumption.CounterSet, Consumes: make(map[string]int64, len(consumption.Counters))}
	for name, n := range consumption.Counters {
		c.Consumes[name] = n.Value.Value()
	}
	return c
}
