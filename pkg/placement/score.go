package placement

import (
	"math"
	"slices"
)

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

// Tolerance is how much more fragmentation than the least, in milli-GPUs,
// a node's placement may cause and still count among the best nodes for a
// request. The measure is an expectation over a workload that is itself an
// estimate, so it ranks nodes that differ by a fraction of a GPU more
// finely than it knows; among the nodes it cannot tell apart, Normalize
// lets a fixed node order choose, which packs. 0.4 GPU was chosen on the
// openb trace and its multi-GPU variants (docs/benchmarks.md, "Ties in a
// fixed node order").
const Tolerance = 400

// OrderLevels is the number of places of NodeOrder.
const OrderLevels = 51

// NodeOrder is a node's place in a fixed node order, 0 to OrderLevels-1
// (higher first): a hash of its name, so that every scheduler replica and
// every scheduling cycle agrees on it without state, and nodes of one kind
// are spread over the order. salt selects one of many such orders (the
// simulator draws one per seed, as FGD's simulator draws its node names);
// tessera-scheduler uses 0.
func NodeOrder(name string, salt uint64) int64 {
	// FNV-1a over the name, without allocating (NormalizeScore calls it for
	// every node of every pod), then splitmix64's finalizer, so that every
	// bit of the name and the salt moves the place.
	const offset64, prime64 = 14695981039346656037, 1099511628211
	x := uint64(offset64)
	for i := 0; i < len(name); i++ {
		x ^= uint64(name[i])
		x *= prime64
	}
	x ^= salt * 0x9e3779b97f4a7c15
	x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
	x = (x ^ x>>27) * 0x94d049bb133111eb
	x ^= x >> 31
	return int64(x % OrderLevels)
}

// Normalize maps the fragmentation deltas of the feasible nodes to scores in
// [0, MaxScore], as a scheduler plugin's NormalizeScore does, with order[i]
// the NodeOrder of node i and tolerance in milli-GPUs (Tolerance; the
// simulator tries others). A node whose delta is within tolerance of the
// least is one of the best: it scores MaxScore-OrderLevels+1 (50) plus its
// place in the node order. Every further tolerance costs a point below
// that, down to 0; a tolerance of 0 makes only the least delta the best.
// With a plugin weight above the spread of the other scores (the stock ones
// differ by at most 200 between nodes of a fleet without taints, affinities
// or images: weight 300), the node chosen is one of the best, the first of
// them in the node order, and the other scores choose only among nodes of
// one place.
func Normalize(deltas []float64, order []int64, tolerance float64) []int64 {
	out := make([]int64, len(deltas))
	if len(deltas) == 0 {
		return out
	}
	lo := slices.Min(deltas)
	const best = MaxScore - OrderLevels + 1
	for i, d := range deltas {
		step := math.Inf(1)
		if d == lo {
			step = 0
		} else if tolerance > 0 {
			step = math.Floor((d - lo) / tolerance)
		}
		if step < 1 {
			out[i] = best + order[i]
			continue
		}
		out[i] = best - int64(math.Min(step, best))
	}
	return out
}
