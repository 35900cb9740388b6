package placement

import "math"

// MaxScore is the highest node score, as in kube-scheduler's framework.
const MaxScore = 100

// Choice picks the GPUs of a node a request goes to.
type Choice func(w Workload, m Measure, n Node, r Request) []int

// ChoiceFirstFit is what kube-scheduler's allocator does on Tessera's slices
// (see Node.FirstFit). It is the choice the scheduler plugin scores with,
// because the plugin chooses nodes, not devices.
func ChoiceFirstFit(_ Workload, _ Measure, n Node, r Request) []int { return n.FirstFit(r) }

// ChoiceLeastFragmenting puts a share on the GPU where it adds least to the
// node's fragmentation (FGD's choice inside a node), ties going to the lower
// index; whole GPUs are interchangeable, so they are taken first-fit.
func ChoiceLeastFragmenting(w Workload, m Measure, n Node, r Request) []int {
	if !r.Shared() || !n.Fits(r) {
		return n.FirstFit(r)
	}
	best, bestDelta := -1, math.Inf(1)
	tried := map[int]bool{}
	for i, f := range n.Free {
		if f < r.Milli || tried[f] {
			continue
		}
		tried[f] = true
		if d := w.Delta(m, n, r, []int{i}); d < bestDelta {
			best, bestDelta = i, d
		}
	}
	return []int{best}
}

// Assess returns where the request would go on the node under the choice and
// the change of fragmentation by the measure it causes; ok is false when it
// does not fit.
func (w Workload) Assess(m Measure, n Node, r Request, choose Choice) (delta float64, gpus []int, ok bool) {
	if !n.Fits(r) {
		return 0, nil, false
	}
	gpus = choose(w, m, n, r)
	return w.Delta(m, n, r, gpus), gpus, true
}

// Resolution is the change of fragmentation, in milli-GPUs, that one point
// of the normalized score stands for.
const Resolution = 0.01

// Normalize maps fragmentation deltas of the feasible nodes to scores in
// [0, MaxScore], as a scheduler plugin's NormalizeScore does: the least delta
// scores MaxScore and every Resolution more costs a point. Only the best
// nodes matter for the choice, so the scale is fixed and fine rather than
// stretched over the range (a min-max scale lets one outlier merge the best
// nodes into one score, leaving the choice to the other plugins). With a
// plugin weight above the sum of the other scores, the node chosen is one
// whose delta is within Resolution of the least.
func Normalize(deltas []float64) []int64 {
	out := make([]int64, len(deltas))
	if len(deltas) == 0 {
		return out
	}
	lo := deltas[0]
	for _, d := range deltas {
		lo = math.Min(lo, d)
	}
	for i, d := range deltas {
		out[i] = MaxScore - int64(math.Min(math.Floor((d-lo)/Resolution), MaxScore))
	}
	return out
}
