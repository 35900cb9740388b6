package sim

import (
	"cmp"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"

	"github.com/tessera-gpu/tessera/pkg/placement"
)

// Policy is a way of placing GPU work.
type Policy string

const (
	// PolicyWhole is what a device plugin gives: whole GPUs only, so a pod
	// asking for part of a GPU takes a whole one; stock node choice.
	PolicyWhole Policy = "whole"
	// PolicyStock is Tessera's shares with the stock kube-scheduler.
	PolicyStock Policy = "stock"
	// PolicyTessera is Tessera's shares with tessera-scheduler: the stock
	// plugins plus Tessera's fragmentation score, scoring every node; the
	// score (placement.Normalize) takes the nodes whose fragmentation delta
	// is within placement.Tolerance of the least in a fixed node order.
	PolicyTessera Policy = "tessera"
	// PolicyFGD is the reference: FGD as its artifact's simulator runs it
	// (github.com/hkust-adsl/kubernetes-scheduler-simulator): the node and
	// the GPU inside it with the highest FGD score (placement.FGDScore, an
	// integer sigmoid of FGD's fragmentation delta), ties going to the node
	// that comes first in a node order drawn at random once per seed (its
	// patched kube-scheduler takes the least node name among the best, and
	// it names nodes after a seeded random permutation). The GPU is pinned in the claim (a CEL selector on the
	// GPU index) so the allocator still checks the placement; the stock
	// scheduler cannot choose a GPU that way, so this is a yardstick, not an
	// option.
	PolicyFGD Policy = "fgd"
)

// Policies are the policies in the order reports list them.
var Policies = []Policy{PolicyWhole, PolicyStock, PolicyTessera, PolicyFGD}

// ParsePolicy checks a policy name.
func ParsePolicy(name string) (Policy, error) {
	for _, p := range Policies {
		if string(p) == name {
			return p, nil
		}
	}
	return "", fmt.Errorf("unknown policy %q (want one of whole, stock, tessera, fgd)", name)
}

// Scheduler models kube-scheduler 1.37's choice of a node for one pod, with
// the default profile. Of its filters, NodeResourcesFit (CPU, memory) and
// DynamicResources (the allocator) can reject a node here; the others pass
// every node of a fleet without taints, affinities or volumes. Of its
// scores, only NodeResourcesFit (LeastAllocated over CPU and memory, weights
// 1:1) and NodeResourcesBalancedAllocation (CPU and memory) differ between
// nodes: TaintToleration, NodeAffinity, InterPodAffinity, PodTopologySpread
// (no selectors on these pods), ImageLocality and DynamicResources (no
// prioritized lists) give every node the same score, and DRA devices enter
// no score. Both differing scores have weight 1.
//
// Like kube-scheduler, it filters nodes round-robin from where the previous
// pod stopped and stops once it has found numFeasibleNodesToFind nodes
// (adaptive percentageOfNodesToScore), and picks at random among the
// highest-scoring nodes.
type Scheduler struct {
	fleet  *Fleet
	states []state
	rng    *rand.Rand
	policy Policy
	next   int
	// tessera-scheduler's profile: every node is scored, and the
	// fragmentation score is added with this weight.
	workload placement.Workload
	measure  placement.Measure
	weight   int64
	choice   placement.Choice
	// rank is PolicyFGD's node order: among nodes of equal score, the one of
	// least rank wins.
	rank []int
	// order is PolicyTessera's node order: each node's placement.NodeOrder,
	// salted with the seed (a cluster whose nodes have other names).
	order []int64
	// tolerance is PolicyTessera's placement.Tolerance, or the one tried.
	tolerance float64
	cache     []map[placement.Request]cached
	// scratch
	feasible []int
	deltas   []float64
	orders   []int64
}

type cached struct {
	gen   int
	delta float64
	gpus  []int
}

// percentageOfNodesToScore as kube-scheduler computes it when the profile
// leaves it unset.
func numFeasibleNodesToFind(all int) int {
	const minFeasible, base, minPercent = 100, 50, 5
	if all < minFeasible {
		return all
	}
	percent := max(base-all/125, minPercent)
	return max(all*percent/100, minFeasible)
}

// request is the pod's request as the policy sees it: whole GPUs only for
// PolicyWhole.
func (s *Scheduler) request(p Pod) placement.Request {
	r := p.Request
	if s.policy == PolicyWhole && r.GPUs > 0 {
		r.Milli = placement.WholeGPU
	}
	return r
}

// Pick returns the node for the pod, or -1 when none fits, and for
// PolicyFGD the GPUs to pin. exclude lists nodes to leave out.
func (s *Scheduler) Pick(p Pod, exclude map[int]bool) (int, []int) {
	r := s.request(p)
	n := len(s.states)
	want := n
	if s.policy == PolicyWhole || s.policy == PolicyStock {
		want = numFeasibleNodesToFind(n)
	}
	s.feasible = s.feasible[:0]
	processed := 0
	for i := range n {
		idx := (s.next + i) % n
		processed++
		if exclude[idx] || !modelAllows(p, s.fleet.Specs[idx]) || !s.states[idx].node.Fits(r) {
			continue
		}
		s.feasible = append(s.feasible, idx)
		if len(s.feasible) == want {
			break
		}
	}
	s.next = (s.next + processed) % n
	if len(s.feasible) == 0 {
		return -1, nil
	}
	var frag []int64
	if s.policy == PolicyTessera || s.policy == PolicyFGD {
		s.deltas = s.deltas[:0]
		for _, idx := range s.feasible {
			s.deltas = append(s.deltas, s.delta(idx, r).delta)
		}
	}
	if s.policy == PolicyTessera {
		s.orders = s.orders[:0]
		for _, idx := range s.feasible {
			s.orders = append(s.orders, s.order[idx])
		}
		frag = placement.Normalize(s.deltas, s.orders, s.tolerance)
	}
	best, bestScore, ties := -1, int64(math.MinInt64), 0
	for i, idx := range s.feasible {
		var score int64
		switch s.policy {
		case PolicyFGD:
			score = placement.FGDScore(s.deltas[i])
		case PolicyTessera:
			score = s.stockScore(idx, r) + s.weight*frag[i]
		default:
			score = s.stockScore(idx, r)
		}

		switch {
		case score > bestScore:
			best, bestScore, ties = idx, score, 1
		case score == bestScore && s.rank != nil:
			if s.rank[idx] < s.rank[best] {
				best = idx
			}
		case score == bestScore:
			// Reservoir sampling, as kube-scheduler's selectHost does.
			ties++
			if s.rng.IntN(ties) == 0 {
				best = idx
			}
		}
	}
	if s.policy == PolicyFGD {
		return best, s.delta(best, r).gpus
	}
	return best, nil
}

// delta is the node's change of fragmentation for the request, cached until
// the node changes: only one node changes per pod, so the simulation scores
// thousands of nodes per pod at the cost of a map lookup each.
func (s *Scheduler) delta(idx int, r placement.Request) cached {
	st := &s.states[idx]
	if c, ok := s.cache[idx][r]; ok && c.gen == st.gen {
		return c
	}
	d, gpus, _ := s.workload.Assess(s.measure, st.node, r, s.choice)
	c := cached{gen: st.gen, delta: d, gpus: gpus}
	s.cache[idx][r] = c
	return c
}

// stockScore is NodeResourcesFit (LeastAllocated) plus
// NodeResourcesBalancedAllocation, in kube-scheduler's integer arithmetic.
func (s *Scheduler) stockScore(idx int, r placement.Request) int64 {
	spec := s.fleet.Specs[idx]
	node := s.states[idx].node
	// The scheduler scores with non-zero requests: a container without a
	// request counts as 100m CPU and 200Mi memory.
	cpu, mem := r.CPU, r.Memory
	if cpu == 0 {
		cpu = 100
	}
	if mem == 0 {
		mem = 200
	}
	reqCPU := spec.CPU - node.CPU + cpu
	reqMem := spec.Memory - node.Memory + mem
	least := func(requested, capacity int64) int64 {
		if capacity == 0 || requested > capacity {
			return 0
		}
		return (capacity - requested) * placement.MaxScore / capacity
	}
	leastAllocated := (least(reqCPU, spec.CPU) + least(reqMem, spec.Memory)) / 2
	fracCPU := math.Min(float64(reqCPU)/float64(spec.CPU), 1)
	fracMem := math.Min(float64(reqMem)/float64(spec.Memory), 1)
	balanced := int64((1 - math.Abs(fracCPU-fracMem)/2) * placement.MaxScore)
	return leastAllocated + balanced
}

// fgdTypicalShare is the share of the workload's requests FGD's typical
// requests cover.
const fgdTypicalShare = 0.95

// fgdTypical is the workload FGD's own simulator measures fragmentation
// against (its "typical pods", GetTypicalPods with the artifact's settings):
// requests are told apart by CPU, GPU amount, GPU count and GPU models, not
// memory, a request without CPU counting as 100 milli-cores as the
// scheduler counts it; only the commonest of them, taken from the commonest
// down until they make 95 % of requests, with their weights scaled back to
// sum to 1.
func fgdTypical(w placement.Workload) placement.Workload {
	merged := map[placement.Request]float64{}
	for _, c := range w.Classes {
		r := c.Request
		r.Memory = 0
		if r.CPU == 0 {
			r.CPU = 100
		}
		merged[r] += c.Weight
	}
	classes := make([]placement.Class, 0, len(merged))
	for r, weight := range merged {
		classes = append(classes, placement.Class{Request: r, Weight: weight})
	}
	// The commonest first; among equals, as FGD's simulator orders them, the
	// larger CPU, GPU amount, count and models first.
	slices.SortFunc(classes, func(a, b placement.Class) int {
		if math.Abs(a.Weight-b.Weight) > 1e-12 {
			return cmp.Compare(b.Weight, a.Weight)
		}
		x, y := a.Request, b.Request
		return cmp.Or(cmp.Compare(y.CPU, x.CPU), cmp.Compare(y.Milli, x.Milli), cmp.Compare(y.GPUs, x.GPUs), cmp.Compare(y.Models, x.Models))
	})
	var out placement.Workload
	var sum float64
	for _, c := range classes {
		if sum >= fgdTypicalShare-1e-12 {
			break
		}
		sum += c.Weight
		out.Classes = append(out.Classes, c)
	}
	for i := range out.Classes {
		out.Classes[i].Weight /= sum
	}
	return out
}
