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

// ChoiceFGD puts a share on the GPU FGD's scheduler picks: the one with the
// highest FGDScore, ties going to the lower index (so a share goes to the
// first GPU among those whose deltas differ by less than a score point, not
// to the least delta); whole GPUs are interchangeable, so they are taken
// first-fit, as FGD takes them.
func ChoiceFGD(w Workload, m Measure, n Node, r Request) []int {
	if !r.Shared() || !n.Fits(r) {
		return n.FirstFit(r)
	}
	best, bestScore := -1, int64(math.MinInt64)
	tried := map[int]bool{}
	for i, f := range n.Free {
		if f < r.Milli || tried[f] {
			continue
		}
		tried[f] = true
		if s := FGDScore(w.Delta(m, n, r, []int{i})); s > bestScore {
			best, bestScore = i, s
		}
	}
	return []int{best}
}

// FGDScore is the node score FGD's scheduler gives a placement that changes
// the node's fragmentation by delta milli-GPUs: MaxScore times the sigmoid of
// minus delta in GPUs, truncated to an integer. It is coarse: deltas within
// about 40 milli-GPUs of each other near 0 (more further out) score the same,
// and FGD's scheduler then takes the first of the tied nodes in its node
// order, which packs.
func FGDScore(delta float64) int64 {
	return int64(MaxScore / (1 + math.Exp(delta/WholeGPU)))
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
