package placement

import (
	"fmt"
	"sort"
)

// Class is one kind of request in a workload and how often it comes.
type Class struct {
	Request Request
	// Weight is the class's share of the workload's requests; the weights
	// of a Workload sum to 1.
	Weight float64
}

// Workload is the mix of requests a cluster expects, against which
// fragmentation is measured.
type Workload struct {
	Classes []Class
	// Pressure is, per GPU model, how much of its capacity the requests
	// pinned to GPU models expect, relative to what the whole workload
	// expects of the whole fleet (WithCapacity); empty when no request is
	// pinned or the fleet is not known.
	Pressure map[string]float64
}

// WithCapacity returns the workload with the pressure of its model-pinned
// requests on each GPU model of a fleet that has the given milli-GPUs of each
// model: per model, the sum over the pinned classes that may use it of their
// expected demand spread over the capacity of all the models each may use,
// divided by the whole workload's expected demand over the whole capacity.
// A model that pinned requests alone would fill has a pressure near 1 or
// more; a model no request is pinned to, 0.
func (w Workload) WithCapacity(capacity map[string]int64) Workload {
	var all int64
	for _, c := range capacity {
		all += c
	}
	var demand float64
	for _, c := range w.Classes {
		demand += c.Weight * float64(c.Request.Demand())
	}
	w.Pressure = nil
	if all == 0 || demand == 0 {
		return w
	}
	for _, c := range w.Classes {
		r := c.Request
		if r.Models == "" || r.GPUs == 0 {
			continue
		}
		var models []string
		var allowed int64
		for m, milli := range capacity {
			if r.Allows(m) && milli > 0 {
				models = append(models, m)
				allowed += milli
			}
		}
		if allowed == 0 {
			continue
		}
		if w.Pressure == nil {
			w.Pressure = map[string]float64{}
		}
		for _, m := range models {
			w.Pressure[m] += c.Weight * float64(r.Demand()) / float64(allowed) / (demand / float64(all))
		}
	}
	return w
}

// NewWorkload counts the requests into classes of identical requests,
// heaviest first.
func NewWorkload(requests []Request) (Workload, error) {
	count := map[Request]int{}
	for _, r := range requests {
		if r.GPUs == 0 {
			r.Milli, r.Models = 0, ""
		}
		count[r]++
	}
	return WorkloadOf(count)
}

// WorkloadOf returns the workload of the given number of each request,
// heaviest first.
func WorkloadOf(count map[Request]int) (Workload, error) {
	var w Workload
	var total float64
	for r, n := range count {
		if r.GPUs < 0 || r.GPUs > 0 && (r.Milli <= 0 || r.Milli > WholeGPU || r.Shared() && r.GPUs != 1) {
			return Workload{}, fmt.Errorf("request %+v: GPU amount must be in (0, %d]", r, WholeGPU)
		}
		if n <= 0 {
			continue
		}
		total += float64(n)
		w.Classes = append(w.Classes, Class{Request: r, Weight: float64(n)})
	}
	if total == 0 {
		return Workload{}, fmt.Errorf("workload has no requests")
	}
	for i := range w.Classes {
		w.Classes[i].Weight /= total
	}
	sort.Slice(w.Classes, func(i, j int) bool {
		a, b := w.Classes[i], w.Classes[j]
		if a.Weight != b.Weight {
			return a.Weight > b.Weight
		}
		return fmt.Sprint(a.Request) < fmt.Sprint(b.Request)
	})
	return w, nil
}

// FGD is the expected amount of the node's free GPU, in milli-GPUs, that a
// request drawn from the workload could not use, as FGD measures it: FGD's
// F_n(M) = Σ_m p_m F_n(m), where F_n(m) is
//   - all free GPU of the node when m asks for no GPU, or does not fit the
//     node at all (CPU, memory, a GPU model m may not use, or no GPU with
//     enough left);
//   - otherwise the free GPU of each GPU too small for m: less than m's
//     share for a share, not idle for whole GPUs.
func (w Workload) FGD(n Node) float64 {
	total := n.FreeGPU()
	if total == 0 {
		return 0
	}
	// Sorting the free amounts lets each class sum the GPUs below its
	// threshold in one pass from the smallest.
	free := append([]int(nil), n.Free...)
	sort.Ints(free)
	largest := free[len(free)-1]
	idle := 0
	var partial int64
	for _, f := range free {
		if f == WholeGPU {
			idle++
		} else {
			partial += int64(f)
		}
	}
	var frag float64
	for _, c := range w.Classes {
		r := c.Request
		switch {
		case r.GPUs == 0 || r.CPU > n.CPU || r.Memory > n.Memory || !r.Allows(n.Model):
			frag += c.Weight * float64(total)
		case r.Shared():
			if largest < r.Milli {
				frag += c.Weight * float64(total)
				continue
			}
			var small int64
			for _, f := range free {
				if f >= r.Milli {
					break
				}
				small += int64(f)
			}
			frag += c.Weight * float64(small)
		default:
			if idle < r.GPUs {
				frag += c.Weight * float64(total)
				continue
			}
			frag += c.Weight * float64(partial)
		}
	}
	return frag
}

// Measure is a measure of a node's fragmentation for a workload, in
// milli-GPUs.
type Measure func(Workload, Node) float64

// Fragmentation is Tessera's measure: Stranded plus FGD. Each sees what the
// other misses (Stranded: GPUs that CPU or memory leave unusable, and the
// remainders of GPUs after packing; FGD: GPUs too small for a request at
// all), and on openb their sum leaves less unallocated than either alone
// (docs/benchmarks.md).
//
// On a fleet of several GPU models with requests pinned to some of them, it
// also counts each free milli-GPU as worth less by the pressure of the
// pinned requests on the node's model (WithCapacity): placing a request
// there costs what it takes times that pressure, so requests that may go
// anywhere fill the models few pinned requests need before those that the
// pinned requests need (placing a pinned request costs the same on every
// node it may use, so only its choice among its models changes). Without
// pinned requests this term is zero.
func (w Workload) Fragmentation(n Node) float64 {
	return w.Stranded(n) + w.FGD(n) - w.Pressure[n.Model]*float64(n.FreeGPU())
}

// Delta is how much placing the request on the given GPUs of the node
// changes the node's fragmentation for the workload; lower is better (FGD
// places each request where this is least).
func (w Workload) Delta(m Measure, n Node, r Request, gpus []int) float64 {
	return m(w, n.With(r, gpus)) - m(w, n)
}

// Stranded is Tessera's measure: the expected amount of the node's free GPU,
// in milli-GPUs, that requests of a class drawn from the workload could not
// use if the node were filled with as many of them as fit — per class, the
// free GPU minus what the most instances that fit by GPU, CPU and memory
// together would take.
//
// It differs from FGD's measure in two ways that matter on real traces.
// FGD counts a GPU's free part as usable when one request fits it, so a GPU
// with 0.9 left is not fragmented for requests of 0.5; here 0.4 of it is.
// And FGD counts CPU and memory only when not even one request fits, while
// here a node whose CPU runs out after one request strands the rest of its
// GPUs for that class: on openb, where CPU is the scarcer resource on many
// nodes, most GPUs left unallocated under FGD sit on nodes without CPU left.
func (w Workload) Stranded(n Node) float64 {
	total := n.FreeGPU()
	if total == 0 {
		return 0
	}
	idle := n.idle()
	var frag float64
	for _, c := range w.Classes {
		r := c.Request
		if r.GPUs == 0 || !r.Allows(n.Model) {
			frag += c.Weight * float64(total)
			continue
		}
		var byGPU int64
		if r.Shared() {
			for _, f := range n.Free {
				byGPU += int64(f / r.Milli)
			}
		} else {
			byGPU = int64(idle / r.GPUs)
		}
		fit := byGPU
		if r.CPU > 0 {
			fit = min(fit, n.CPU/r.CPU)
		}
		if r.Memory > 0 {
			fit = min(fit, n.Memory/r.Memory)
		}
		frag += c.Weight * float64(total-fit*r.Demand())
	}
	return frag
}
