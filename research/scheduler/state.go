// Package scheduler is Tessera's placement plugin for kube-scheduler: a
// Score plugin that ranks the nodes that passed filtering by how much the
// pod's GPU claim would add to their GPU fragmentation (package placement),
// reading the DRA state the scheduler itself keeps (ResourceSlices and
// allocated claims, through the framework's SharedDRAManager). With the
// placement choice (tessera-scheduler's patched allocator), a PreFilter
// learns which device classes the pods ask for (Demand), and the allocator's
// order and the score weigh what a MIG placement blocks by it. It is built
// into research/cmd/tessera-scheduler with the scheduler framework's out-of-tree
// plugin mechanism; this package depends only on the framework's interfaces
// (k8s.io/kube-scheduler), never on k8s.io/kubernetes.
package scheduler

import (
	"fmt"
	"maps"
	"sync"
	"unique"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	resourcehelper "k8s.io/component-helpers/resource"
	draapi "k8s.io/dynamic-resource-allocation/api"
	"k8s.io/dynamic-resource-allocation/resourceclaim"
	"k8s.io/dynamic-resource-allocation/structured"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/pkg/partition"
	"github.com/tessera-gpu/tessera/pkg/placement"
)

// DRAState is the part of the scheduler's DRA state the plugin reads. The
// framework's SharedDRAManager provides it; tests fake it.
type DRAState interface {
	// Slices are all ResourceSlices.
	Slices() ([]*resourceapi.ResourceSlice, error)
	// Claim returns a ResourceClaim.
	Claim(namespace, name string) (*resourceapi.ResourceClaim, error)
	// Allocated is what all allocated claims hold, including claims the
	// scheduler has assumed but not yet written.
	Allocated() (*structured.AllocatedState, error)
}

// nodeGPUs are the device IDs of one node's GPUs, by GPU index.
type nodeGPUs struct {
	whole, shared []structured.DeviceID
	// others are the MIG partitions of each GPU: any of them allocated
	// makes the GPU unusable for shares and whole-GPU claims.
	others [][]structured.DeviceID
	// mig are the MIG partitions whose placement is published, in the
	// order the allocator walks them (slice order), for its first fit
	// (migPlace).
	mig []migDevice
	// memorySlices is each GPU's number of MIG memory slices: the end of
	// its furthest partition, 0 without partitions.
	memorySlices []int
	// choices are the node's devices as the placement choice sees them
	// (choiceOf), in published order; sets names each GPU's counter set
	// and counters holds each counter set's capacity, from the slices'
	// shared counters. The MIG model reads what is left of them (mig.go).
	choices  []partition.Choice
	sets     []string
	counters map[string]map[string]int64
	// migCount is each GPU's number of partitions in mig; shapes numbers
	// each GPU's kind (gpuShapes).
	migCount  []int
	shapeOnce sync.Once
	shapes    []int
	// layoutKey is the node's layout for the placement memo (memo.go).
	layoutOnce sync.Once
	layoutKey  unique.Handle[string]
	// prepared are choices numbered for partition.BestFit, and capacity
	// what each counter set holds, so numbered: the index's, shared by
	// the nodes of one layout, else made on the first use.
	prepareOnce sync.Once
	prepared    *partition.Prepared
	capacity    partition.Left
	// cache is this node's fragmentation, kept between pods (cache.go).
	cache fragCache
	// from are the slices the node was indexed from; at locates its
	// devices (locate).
	from []*resourceapi.ResourceSlice
	at   map[structured.DeviceID]deviceAt
}

// migDevice is one MIG partition: the memory slices [start, start+size) of
// GPU gpu.
type migDevice struct {
	id          structured.DeviceID
	gpu         int
	profile     string
	start, size int
	// choice is the partition's index in nodeGPUs.choices, pos its index
	// among its GPU's partitions in nodeGPUs.mig.
	choice, pos int
}

// converted is what the MIG model reads of one slice (choiceOfDevice): the
// choice of each device, by its index in the slice, and the capacity of
// each counter set. Read-only once made.
type converted struct {
	choices  []partition.Choice
	counters map[string]map[string]int64
}

func convert(s *resourceapi.ResourceSlice) converted {
	out := converted{choices: make([]partition.Choice, len(s.Spec.Devices)), counters: make(map[string]map[string]int64, len(s.Spec.SharedCounters))}
	for i, d := range s.Spec.Devices {
		out.choices[i] = choiceOfDevice(d)
	}
	for _, set := range s.Spec.SharedCounters {
		c := make(map[string]int64, len(set.Counters))
		for name, v := range set.Counters {
			c[name] = v.Value.Value()
		}
		out.counters[set.Name] = c
	}
	return out
}

// gpusByNode indexes Tessera's devices of node-local pools by node and GPU.
func gpusByNode(slices []*resourceapi.ResourceSlice) map[string]*nodeGPUs {
	out := map[string]*nodeGPUs{}
	for _, s := range slices {
		if s.Spec.Driver != gpuapi.DriverName || s.Spec.NodeName == nil {
			continue
		}
		n := out[*s.Spec.NodeName]
		if n == nil {
			n = &nodeGPUs{counters: map[string]map[string]int64{}}
			out[*s.Spec.NodeName] = n
		}
		c := convert(s)
		maps.Copy(n.counters, c.counters)
		for j, d := range s.Spec.Devices {
			index, ok := d.Attributes[gpuapi.AttrIndex]
			typ, typed := d.Attributes[gpuapi.AttrType]
			if !ok || index.IntValue == nil || !typed || typ.StringValue == nil || *index.IntValue < 0 || *index.IntValue > 1024 {
				continue
			}
			i := int(*index.IntValue)
			for len(n.whole) <= i {
				n.whole = append(n.whole, structured.DeviceID{})
				n.shared = append(n.shared, structured.DeviceID{})
				n.others = append(n.others, nil)
				n.sets = append(n.sets, "")
				n.migCount = append(n.migCount, 0)
			}
			id := structured.MakeDeviceID(s.Spec.Driver, s.Spec.Pool.Name, d.Name)
			choice := c.choices[j]
			if choice.CounterSet != "" {
				n.sets[i] = choice.CounterSet
			}
			n.choices = append(n.choices, choice)
			switch *typ.StringValue {
			case gpuapi.TypeGPU:
				n.whole[i] = id
			case gpuapi.TypeShared:
				n.shared[i] = id
			default:
				n.others[i] = append(n.others[i], id)
				if m, ok := migOf(d, i, id); ok && m.start >= 0 && m.size > 0 && m.start+m.size <= 64 {
					m.choice = len(n.choices) - 1
					m.pos = n.migCount[i]
					n.migCount[i]++
					n.mig = append(n.mig, m)
					for len(n.memorySlices) <= i {
						n.memorySlices = append(n.memorySlices, 0)
					}
					n.memorySlices[i] = max(n.memorySlices[i], m.start+m.size)
				}
			}
		}
	}
	return out
}

// gpuShapes numbers the node's GPUs by kind, once: two GPUs of one shape
// have the same counters and the same devices in the same order (class and
// consumption), so the same partition of either, in the same state, costs
// the other devices of its GPU the same (partition.BestFit). A GPU with more
// than 64 partitions, or whose devices draw on no counter set of its own,
// gets -1. It depends on the node's layout alone: sliceIndex.get gives it
// to the nodes of a layout it has worked out already, else it is worked out
// on the first use.
func (n *nodeGPUs) gpuShapes() []int {
	n.shapeOnce.Do(func() {
		if n.shapes != nil {
			return
		}
		gpuOf := make(map[string]int, len(n.sets))
		for g, set := range n.sets {
			if set != "" {
				gpuOf[set] = g
			}
		}
		perGPU := make([][]int, len(n.sets))
		for i, c := range n.choices {
			if g, ok := gpuOf[c.CounterSet]; ok {
				perGPU[g] = append(perGPU[g], i)
			}
		}
		same := func(a, b int) bool {
			if len(perGPU[a]) != len(perGPU[b]) || !maps.Equal(n.counters[n.sets[a]], n.counters[n.sets[b]]) {
				return false
			}
			for k := range perGPU[a] {
				ca, cb := n.choices[perGPU[a][k]], n.choices[perGPU[b][k]]
				if ca.Class != cb.Class || !maps.Equal(ca.Consumes, cb.Consumes) {
					return false
				}
			}
			return true
		}
		shapes := make([]int, len(n.sets))
		var first []int // the first GPU of each shape
		for g, set := range n.sets {
			shapes[g] = -1
			if set == "" || n.migCount[g] > 64 {
				continue
			}
			for id, r := range first {
				if same(g, r) {
					shapes[g] = id
					break
				}
			}
			if shapes[g] < 0 {
				shapes[g] = len(first)
				first = append(first, g)
			}
		}
		n.shapes = shapes
	})
	return n.shapes
}

// capacityLeft is what the node's counter sets hold, numbered as its
// choices prepared for partition.BestFit: what sliceIndex.get gave it, else
// prepared on the first use. Read-only: clone it to change it.
func (n *nodeGPUs) capacityLeft() partition.Left {
	n.prepareOnce.Do(func() {
		if n.prepared == nil {
			n.prepared = partition.Prepare(n.choices)
			n.capacity = n.prepared.Left(n.counters)
		}
	})
	return n.capacity
}

// snapshot is what the node's scores read of the allocated state, as one
// slice the cache can compare: for each GPU the milli-GPUs left of it
// (nothing when the whole GPU or a MIG partition of it is allocated, else
// what its shares leave of its compute capacity); then for each GPU 1 where
// the whole GPU or a share of it is allocated, so that no MIG partition
// fits; then for each MIG partition of n.mig 1 where it is allocated.
func (n *nodeGPUs) snapshot(alloc *structured.AllocatedState) []int {
	gpus := len(n.whole)
	out := make([]int, 2*gpus+len(n.mig))
	free, blocked, busy := out[:gpus], out[gpus:2*gpus], out[2*gpus:]
	for i := range free {
		free[i] = placement.WholeGPU
		if alloc.AllocatedDevices.Has(n.whole[i]) {
			free[i], blocked[i] = 0, 1
			continue
		}
		for _, id := range n.others[i] {
			if alloc.AllocatedDevices.Has(id) {
				free[i] = 0
				break
			}
		}
		if used, ok := alloc.AggregatedCapacity[n.shared[i]]; ok {
			blocked[i] = 1
			if q := used[gpuapi.CapCompute]; q != nil && free[i] > 0 {
				free[i] = max(placement.WholeGPU-int(q.Value())*10, 0)
			}
		}
	}
	for i, m := range n.mig {
		if alloc.AllocatedDevices.Has(m.id) {
			busy[i] = 1
		}
	}
	return out
}

// deviceKind is what a device is to snapshot.
type deviceKind uint8

const (
	kindWhole deviceKind = iota
	kindShared
	kindOther
)

// deviceAt is where the index put a device of a node: its GPU, its kind,
// and for a MIG partition with a placement its index in the node's mig
// (else -1).
type deviceAt struct {
	gpu  int
	kind deviceKind
	mig  int
}

// locate maps each of the node's indexed devices to where it is, so that a
// pod's cycle can sort the allocated state by node in one walk
// (allocatedByNode).
func (n *nodeGPUs) locate() {
	n.at = make(map[structured.DeviceID]deviceAt, len(n.whole)+len(n.shared)+len(n.mig))
	var zero structured.DeviceID
	for g := range n.whole {
		if n.whole[g] != zero {
			n.at[n.whole[g]] = deviceAt{gpu: g, kind: kindWhole, mig: -1}
		}
		if n.shared[g] != zero {
			n.at[n.shared[g]] = deviceAt{gpu: g, kind: kindShared, mig: -1}
		}
		for _, id := range n.others[g] {
			n.at[id] = deviceAt{gpu: g, kind: kindOther, mig: -1}
		}
	}
	for i, m := range n.mig {
		n.at[m.id] = deviceAt{gpu: m.gpu, kind: kindOther, mig: i}
	}
}

// nodeAllocated is what is allocated of one node's devices: whole GPUs and
// other devices (MIG partitions) by GPU and index in mig, and the compute
// of each GPU's shares.
type nodeAllocated struct {
	whole, others []int
	mig           []int
	shares        []shareUse
}

type shareUse struct {
	gpu     int
	compute int64
	known   bool
}

// allocatedByNode sorts the allocated state by the index's nodes, in one
// walk of what is allocated instead of a look-up per published device.
func allocatedByNode(byPool map[draapi.UniqueString]*nodeGPUs, alloc *structured.AllocatedState) map[*nodeGPUs]*nodeAllocated {
	out := map[*nodeGPUs]*nodeAllocated{}
	of := func(n *nodeGPUs) *nodeAllocated {
		a := out[n]
		if a == nil {
			a = &nodeAllocated{}
			out[n] = a
		}
		return a
	}
	locate := func(id structured.DeviceID) (*nodeGPUs, deviceAt, bool) {
		n := byPool[id.Pool]
		if n == nil {
			return nil, deviceAt{}, false
		}
		at, ok := n.at[id]
		return n, at, ok
	}
	for id := range alloc.AllocatedDevices {
		n, at, ok := locate(id)
		if !ok || at.kind == kindShared {
			continue
		}
		a := of(n)
		if at.kind == kindWhole {
			a.whole = append(a.whole, at.gpu)
			continue
		}
		a.others = append(a.others, at.gpu)
		if at.mig >= 0 {
			a.mig = append(a.mig, at.mig)
		}
	}
	for id, used := range alloc.AggregatedCapacity {
		n, at, ok := locate(id)
		if !ok || at.kind != kindShared {
			continue
		}
		u := shareUse{gpu: at.gpu}
		if q := used[gpuapi.CapCompute]; q != nil {
			u.compute, u.known = q.Value(), true
		}
		a := of(n)
		a.shares = append(a.shares, u)
	}
	return out
}

// snapshotOf is snapshot (the reference) from the node's sorted allocations,
// without a look-up per device, written into buf's storage when it has the
// room.
func (n *nodeGPUs) snapshotOf(a *nodeAllocated, buf []int) []int {
	gpus := len(n.whole)
	size := 2*gpus + len(n.mig)
	if cap(buf) < size {
		buf = make([]int, size)
	}
	out := buf[:size]
	clear(out)
	free, blocked, busy := out[:gpus], out[gpus:2*gpus], out[2*gpus:]
	for i := range free {
		free[i] = placement.WholeGPU
	}
	if a == nil {
		return out
	}
	// As snapshot decides: a whole GPU or a partition allocated leaves
	// nothing of the GPU free, a share what it does not use of it; a
	// whole GPU or a share blocks partitions.
	for _, g := range a.others {
		free[g] = 0
	}
	for _, s := range a.shares {
		blocked[s.gpu] = 1
		if s.known && free[s.gpu] > 0 {
			free[s.gpu] = max(placement.WholeGPU-int(s.compute)*10, 0)
		}
	}
	for _, g := range a.whole {
		free[g], blocked[g] = 0, 1
	}
	for _, i := range a.mig {
		busy[i] = 1
	}
	return out
}

// shareComputeDefault is the compute share a claim gets when it names none
// (the shared GPU's request policy default, 10 %).
const shareComputeDefault = 10

// deviceAsk is what one request of a claim asks for: an exact request, or a
// firstAvailable request's first choice.
type deviceAsk struct {
	class     string
	count     int64
	capacity  *resourceapi.CapacityRequirements
	selectors []resourceapi.DeviceSelector
	mode      resourceapi.DeviceAllocationMode
}

// firstChoice is the request's exact request or first subrequest; class ""
// when it has neither.
func firstChoice(req resourceapi.DeviceRequest) deviceAsk {
	switch {
	case req.Exactly != nil:
		e := req.Exactly
		return deviceAsk{class: e.DeviceClassName, count: e.Count, capacity: e.Capacity, selectors: e.Selectors, mode: e.AllocationMode}
	case len(req.FirstAvailable) > 0:
		sub := req.FirstAvailable[0]
		return deviceAsk{class: sub.DeviceClassName, count: sub.Count, capacity: sub.Capacity, selectors: sub.Selectors, mode: sub.AllocationMode}
	}
	return deviceAsk{count: 1, mode: resourceapi.DeviceAllocationModeExactCount}
}

// podClaims returns the pod's claims; an error when one cannot be named or
// read yet (a claim from a template not yet created).
func podClaims(pod *corev1.Pod, dra DRAState) ([]*resourceapi.ResourceClaim, error) {
	var out []*resourceapi.ResourceClaim
	for i := range pod.Spec.ResourceClaims {
		name, _, err := resourceclaim.Name(pod, &pod.Spec.ResourceClaims[i])
		if err != nil {
			return nil, fmt.Errorf("claim %s of pod %s/%s: %w", pod.Spec.ResourceClaims[i].Name, pod.Namespace, pod.Name, err)
		}
		if name == nil {
			continue
		}
		claim, err := dra.Claim(pod.Namespace, *name)
		if err != nil {
			return nil, fmt.Errorf("get claim %s/%s: %w", pod.Namespace, *name, err)
		}
		out = append(out, claim)
	}
	return out, nil
}

// podRequest is what the pod asks of Tessera's GPUs and of the node: r, and
// for a MIG claim also mig (r then asks for no GPU). ok is false when its
// claims are not ones the plugin can reason about (several GPU requests,
// other drivers' classes mixed in, MIG selectors other than one profile):
// the plugin then leaves the choice to the other plugins.
func podRequest(pod *corev1.Pod, dra DRAState) (r placement.Request, mig migRequest, ok bool, err error) {
	reqs := resourcehelper.PodRequests(pod, resourcehelper.PodResourcesOptions{})
	r.CPU = reqs.Cpu().MilliValue()
	r.Memory = reqs.Memory().Value() >> 20
	claims, err := podClaims(pod, dra)
	if err != nil {
		return r, mig, false, err
	}
	for _, claim := range claims {
		for _, req := range claim.Spec.Devices.Requests {
			ask := firstChoice(req)
			if r.GPUs > 0 || mig.count > 0 {
				return r, mig, false, nil
			}
			switch ask.class {
			case gpuapi.ClassGPU:
				r.GPUs, r.Milli = int(max(ask.count, 1)), placement.WholeGPU
			case gpuapi.ClassShared:
				compute := int64(shareComputeDefault)
				if ask.capacity != nil {
					if q, ok := ask.capacity.Requests[gpuapi.CapCompute]; ok {
						compute = q.Value()
					}
				}
				if ask.count > 1 || compute < 1 || compute > 100 {
					return r, mig, false, nil
				}
				r.GPUs, r.Milli = 1, int(compute*10)
			case gpuapi.ClassMIG:
				profile, known := selectedProfile(ask.selectors)
				if !known || ask.mode == resourceapi.DeviceAllocationModeAll {
					return r, mig, false, nil
				}
				mig = migRequest{profile: profile, count: int(max(ask.count, 1))}
			default:
				return r, mig, false, nil
			}
		}
	}
	return r, mig, true, nil
}
