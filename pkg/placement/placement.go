// Package placement decides where GPU work should go so that GPUs stay
// usable: it measures how fragmented a node's GPUs are for the work a
// cluster expects (the fragmentation measure of FGD, Weng et al., USENIX ATC
// 2023) and scores a placement by how much it adds to that fragmentation. It
// is pure: the scheduler plugin (research/cmd/tessera-scheduler) and the capacity
// simulator (research/cmd/tessera-sim) call the same functions on the same values.
//
// GPU amounts are in milli-GPUs: a whole GPU is 1000, a share of a
// time-shared GPU is its compute share (Tessera's "compute" capacity, in per
// cent, times ten). A share's memory request is proportional to its compute
// share in the workloads this package models, so one number per GPU says
// what is left of it.
package placement

import "strings"

// WholeGPU is a whole GPU in milli-GPUs.
const WholeGPU = 1000

// Request is what one pod asks for.
type Request struct {
	// CPU in milli-cores and Memory in MiB, as the pod's containers request.
	CPU, Memory int64
	// GPUs is the number of GPUs; 1 for a share.
	GPUs int
	// Milli is the amount of each GPU: WholeGPU for whole GPUs, less for a
	// share of a time-shared GPU. Ignored when GPUs is 0.
	Milli int
	// Models, when not empty, are the GPU models the request may run on,
	// joined by "|" ("V100M16|V100M32"); a node of another model cannot
	// serve it, so all its free GPU is fragmented for this request. Empty:
	// any model.
	Models string
}

// Allows reports whether the request may run on GPUs of the model. A
// request for no GPU, a request without models and a node of unknown model
// ("") allow each other.
func (r Request) Allows(model string) bool {
	if r.Models == "" || model == "" || r.GPUs == 0 {
		return true
	}
	for m := range strings.SplitSeq(r.Models, "|") {
		if strings.EqualFold(m, model) {
			return true
		}
	}
	return false
}

// Shared reports whether the request is a share of one time-shared GPU.
func (r Request) Shared() bool { return r.GPUs == 1 && r.Milli < WholeGPU }

// Demand is the GPU amount the request takes, in milli-GPUs.
func (r Request) Demand() int64 {
	if r.GPUs == 0 {
		return 0
	}
	if r.Shared() {
		return int64(r.Milli)
	}
	return int64(r.GPUs) * WholeGPU
}

// Node is what is left of one node.
type Node struct {
	// CPU in milli-cores and Memory in MiB still unrequested.
	CPU, Memory int64
	// Free is, per GPU in device index order, the milli-GPUs not allocated:
	// WholeGPU for an idle GPU, 0 for a GPU allocated whole.
	Free []int
	// Model is the node's GPU model, "" when unknown (every request may
	// use it).
	Model string
}

// Fits reports whether the request fits the node at all.
func (n Node) Fits(r Request) bool {
	if r.CPU > n.CPU || r.Memory > n.Memory || !r.Allows(n.Model) {
		return false
	}
	switch {
	case r.GPUs == 0:
		return true
	case r.Shared():
		for _, f := range n.Free {
			if f >= r.Milli {
				return true
			}
		}
		return false
	default:
		return n.idle() >= r.GPUs
	}
}

func (n Node) idle() int {
	idle := 0
	for _, f := range n.Free {
		if f == WholeGPU {
			idle++
		}
	}
	return idle
}

// FirstFit returns the GPUs the scheduler's allocator takes for the request
// on this node: Tessera publishes the whole and the shared device of each
// GPU in index order and the allocator takes the first device that fits, so
// a share lands on the lowest-index GPU with enough left and whole GPUs are
// the lowest-index idle ones. It returns nil when the request does not fit
// or asks for no GPU.
func (n Node) FirstFit(r Request) []int {
	if r.GPUs == 0 || !n.Fits(r) {
		return nil
	}
	var out []int
	for i, f := range n.Free {
		if r.Shared() && f >= r.Milli || !r.Shared() && f == WholeGPU {
			out = append(out, i)
			if len(out) == r.GPUs {
				return out
			}
		}
	}
	return nil
}

// With returns the node after the request has been placed on the given GPUs.
func (n Node) With(r Request, gpus []int) Node {
	out := Node{CPU: n.CPU - r.CPU, Memory: n.Memory - r.Memory, Free: append([]int(nil), n.Free...), Model: n.Model}
	for _, g := range gpus {
		if r.Shared() {
			out.Free[g] -= r.Milli
		} else {
			out.Free[g] = 0
		}
	}
	return out
}

// FreeGPU is the sum of the node's free milli-GPUs.
func (n Node) FreeGPU() int64 {
	var s int64
	for _, f := range n.Free {
		s += int64(f)
	}
	return s
}
