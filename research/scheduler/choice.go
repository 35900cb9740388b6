package scheduler

import (
	"sync"
	"sync/atomic"

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

// FinalFutures is how many futures the final choice plays per candidate
// (FinalChoice): 256 place 97.65 % of the packing benchmark's offline best at
// 0.8 ms per request on average; 512 and 1,024 placed 97.77 and 97.65 %
// there, and 97.49 and 97.58 % of the other uniform set where 256 place
// 97.60 %, at 1.3 and 2.5 ms per request (docs/benchmarks.md, Packing).
const FinalFutures = 256

// FinalChoice is tessera-scheduler's final choice among the free MIG
// placements of the node it chose (draapi.SetFinalDeviceOrder with Order: its
// DynamicResources plugin allocates once more in Reserve, research/patches/
// scheduler/final-choice.patch). It ranks the candidates as
// MIGPlacementOrderFor does, then plays FinalFutures futures from the state
// each leaves, requests drawn from the shares of the demand it was made with
// (partition.Left.Rollout), and puts the candidates whose futures use the
// most memory slices first, BestFit's order among equals. It declines what
// MIGPlacementOrderFor declines. Too costly for every node Filter tries (up to
// a millisecond or two per request), it runs once per pod. It counts the choices
// it makes, and those where it moved the partition from the one the ranking
// alone puts first, for the scheduler's /metrics (Collector). Safe for
// concurrent use.
type FinalChoice struct {
	demand      *Demand
	made, moved atomic.Uint64
}

// NewFinalChoice returns the final choice with the demand d has learned.
func NewFinalChoice(d *Demand) *FinalChoice { return &FinalChoice{demand: d} }

// MIGFinalPlacementOrderFor is NewFinalChoice(d).Order.
func MIGFinalPlacementOrderFor(d *Demand) func(driver string, devices []*draapi.Device, left map[string]map[string]int64, selectable func(int) bool) []int {
	return NewFinalChoice(d).Order
}

// Order is the final choice as a draapi.DeviceOrder.
func (f *FinalChoice) Order(driver string, devices []*draapi.Device, left map[string]map[string]int64, selectable func(int) bool) []int {
	return placementOrder(f.demand, f, driver, devices, left, selectable)
}

// Made returns how many choices the final choice made, and in how many of
// them it moved the partition from the one the weighted ranking puts first.
func (f *FinalChoice) Made() (made, moved uint64) { return f.made.Load(), f.moved.Load() }

// migPlacementOrder is MIGPlacementOrder weighed by demand (nil: unweighted).
func migPlacementOrder(demand *Demand, driver string, devices []*draapi.Device, left map[string]map[string]int64, selectable func(int) bool) []int {
	return placementOrder(demand, nil, driver, devices, left, selectable)
}

// placementOrder is migPlacementOrder, followed by the final choice's
// rollout when final is set.
func placementOrder(demand *Demand, final *FinalChoice, driver string, devices []*draapi.Device, left map[string]map[string]int64, selectable func(int) bool) []int {
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
	w := demand.Weights()
	var weights []float64
	if w.Version != 0 {
		weights = prepared.Weigh(w.Weight)
	}
	l := prepared.Left(left)
	ranked := l.BestFitWeighted(candidates, weights)
	if final == nil {
		return ranked
	}
	out := l.Rollout(ranked, prepared.Weigh(w.Share), FinalFutures, 0)
	final.made.Add(1)
	if out[0] != ranked[0] {
		final.moved.Add(1)
	}
	return out
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
