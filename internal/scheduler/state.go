// Package scheduler is Tessera's placement plugin for kube-scheduler: a
// Score plugin that ranks the nodes that passed filtering by how much the
// pod's GPU claim would add to their GPU fragmentation (package placement),
// reading the DRA state the scheduler itself keeps (ResourceSlices and
// allocated claims, through the framework's SharedDRAManager). It is built
// into cmd/tessera-scheduler with the scheduler framework's out-of-tree
// plugin mechanism; this package depends only on the framework's interfaces
// (k8s.io/kube-scheduler), never on k8s.io/kubernetes.
package scheduler

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	resourcehelper "k8s.io/component-helpers/resource"
	"k8s.io/dynamic-resource-allocation/resourceclaim"
	"k8s.io/dynamic-resource-allocation/structured"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
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
			n = &nodeGPUs{}
			out[*s.Spec.NodeName] = n
		}
		for _, d := range s.Spec.Devices {
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
			}
			id := structured.MakeDeviceID(s.Spec.Driver, s.Spec.Pool.Name, d.Name)
			switch *typ.StringValue {
			case gpuapi.TypeGPU:
				n.whole[i] = id
			case gpuapi.TypeShared:
				n.shared[i] = id
			default:
				n.others[i] = append(n.others[i], id)
			}
		}
	}
	return out
}

// free is what is left of each GPU, in milli-GPUs: nothing when the whole
// GPU or a MIG partition of it is allocated, else what its shares leave of
// its compute capacity.
func (n *nodeGPUs) free(alloc *structured.AllocatedState) []int {
	out := make([]int, len(n.whole))
	for i := range out {
		out[i] = placement.WholeGPU
		if alloc.AllocatedDevices.Has(n.whole[i]) {
			out[i] = 0
			continue
		}
		for _, id := range n.others[i] {
			if alloc.AllocatedDevices.Has(id) {
				out[i] = 0
			}
		}
		if out[i] == 0 {
			continue
		}
		if used, ok := alloc.AggregatedCapacity[n.shared[i]]; ok {
			if q := used[gpuapi.CapCompute]; q != nil {
				out[i] = max(placement.WholeGPU-int(q.Value())*10, 0)
			}
		}
	}
	return out
}

// shareComputeDefault is the compute share a claim gets when it names none
// (the shared GPU's request policy default, 10 %).
const shareComputeDefault = 10

// podRequest is what the pod asks of Tessera's GPUs and of the node. ok is
// false when its claims are not ones the plugin can reason about (MIG
// partitions, several GPU requests, other drivers' classes mixed in): the
// plugin then leaves the choice to the other plugins.
func podRequest(pod *corev1.Pod, dra DRAState) (r placement.Request, ok bool, err error) {
	reqs := resourcehelper.PodRequests(pod, resourcehelper.PodResourcesOptions{})
	r.CPU = reqs.Cpu().MilliValue()
	r.Memory = reqs.Memory().Value() >> 20
	for i := range pod.Spec.ResourceClaims {
		name, _, err := resourceclaim.Name(pod, &pod.Spec.ResourceClaims[i])
		if err != nil {
			return r, false, fmt.Errorf("claim %s of pod %s/%s: %w", pod.Spec.ResourceClaims[i].Name, pod.Namespace, pod.Name, err)
		}
		if name == nil {
			continue
		}
		claim, err := dra.Claim(pod.Namespace, *name)
		if err != nil {
			return r, false, fmt.Errorf("get claim %s/%s: %w", pod.Namespace, *name, err)
		}
		for _, req := range claim.Spec.Devices.Requests {
			class, count, capacity := "", int64(1), (*resourceapi.CapacityRequirements)(nil)
			switch {
			case req.Exactly != nil:
				class, count, capacity = req.Exactly.DeviceClassName, req.Exactly.Count, req.Exactly.Capacity
			case len(req.FirstAvailable) > 0:
				sub := req.FirstAvailable[0]
				class, count, capacity = sub.DeviceClassName, sub.Count, sub.Capacity
			}
			if r.GPUs > 0 {
				return r, false, nil
			}
			switch class {
			case gpuapi.ClassGPU:
				r.GPUs, r.Milli = int(max(count, 1)), placement.WholeGPU
			case gpuapi.ClassShared:
				compute := int64(shareComputeDefault)
				if capacity != nil {
					if q, ok := capacity.Requests[gpuapi.CapCompute]; ok {
						compute = q.Value()
					}
				}
				if count > 1 || compute < 1 || compute > 100 {
					return r, false, nil
				}
				r.GPUs, r.Milli = 1, int(compute*10)
			default:
				return r, false, nil
			}
		}
	}
	return r, true, nil
}
