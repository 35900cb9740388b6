package scheduling

import (
	"fmt"
	"math/bits"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/tessera-gpu/tessera/pkg/inventory"
	"github.com/tessera-gpu/tessera/pkg/partition"
)

// rollout is an online placement rule for the packing benchmark that knows
// what no scheduler knows, the benchmark's request distribution (each
// profile equally likely), and spends per request what no scheduler could:
// for each free placement of the request, it plays k random futures from the
// state the placement leaves, each placed by the base rule (fullest), and
// takes the placement whose futures put the most memory slices in use. That
// is one step of policy improvement over the base rule. It shows how far
// above first fit an online rule gets on 8 GPUs, where the exact online
// optimum (BenchmarkOnlineOptimum) cannot be computed.
type rollout struct {
	masks
	k int
}

// fullest is the base rule: the request goes to the GPU that has taken the
// most (memory slices and media engines) among those with a free placement
// of it, in the first such placement in published order.
func (m masks) fullest(s []int, p int) (gpu, mask int, ok bool) {
	most := -1
	for g := range s {
		n := bits.OnesCount(uint(s[g]))
		if n <= most {
			continue
		}
		for _, mk := range m.placements[p] {
			if s[g]&mk == 0 {
				gpu, mask, most = g, mk, n
				break
			}
		}
	}
	return gpu, mask, most >= 0
}

// future is the memory slices the base rule puts in use from state s on,
// drawing profiles from rng until one cannot be placed, at most n.
func (m masks) future(s []int, rng *rand.Rand, n int) int {
	s = slices.Clone(s)
	used := 0
	for range n {
		p := rng.IntN(len(m.placements))
		g, mk, ok := m.fullest(s, p)
		if !ok {
			break
		}
		s[g] |= mk
		used += m.size[p]
	}
	return used
}

// place is the rule's placement of profile p in state s. Every candidate's
// futures are drawn from the same k seeds (common random numbers), so that
// candidates are compared on the same futures. GPUs in the same state are
// tried once.
func (r rollout) place(s []int, p int, seed uint64) (gpu, mask int, ok bool) {
	n := 8 * len(s) // no node takes more partitions than memory slices
	best := -1
	r.each(s, p, func(g, mk int, next []int) {
		v := 0
		for j := range r.k {
			v += r.future(next, rand.New(rand.NewPCG(seed, uint64(j))), n)
		}
		if v > best {
			gpu, mask, best = g, mk, v
		}
	})
	return gpu, mask, best >= 0
}

// each calls visit with every free placement of profile p in state s and
// the state it leaves; GPUs in the same state are tried once.
func (m masks) each(s []int, p int, visit func(g, mk int, next []int)) {
	for g := range s {
		if slices.Index(s, s[g]) < g {
			continue
		}
		for _, mk := range m.placements[p] {
			if s[g]&mk != 0 {
				continue
			}
			next := slices.Clone(s)
			next[g] |= mk
			visit(g, mk, next)
		}
	}
}

// placeRule is an online rule's placement of profile p in state s, at
// the sequence's step-th request.
type placeRule func(s []int, p int, step uint64) (gpu, mask int, ok bool)

// pack places with the rule, on an empty node of n GPUs, the requests
// Packing draws from rng, up to the first that cannot be placed, and
// returns the share of the node's memory slices in use and the number of
// requests it placed.
func (m masks) pack(rng *rand.Rand, n int, place placeRule) (used float64, placed int) {
	s := make([]int, n)
	total := 8 * n
	inUse := 0
	for step := range total {
		p := rng.IntN(len(m.placements))
		g, mk, ok := place(s, p, uint64(step))
		if !ok {
			break
		}
		s[g] |= mk
		inUse += m.size[p]
		placed++
	}
	return float64(inUse) / float64(total), placed
}

// exactTail is the rollout rule with an exact end game. Once at most tail
// GPUs of the node can take another partition, what is left is a node
// small enough for the online optimum (BenchmarkOnlineOptimum's recursion
// over classes), so the rule plays it exactly: it takes the placement whose
// state has the highest optimum value. Before that, each candidate's k
// futures are played by the base rule (fullest) only until they reach such
// a state, and the optimum's value there ends them. It knows what the
// rollout rule knows (the request distribution) and needs the optimum's
// table of every state of tail GPUs (16 million states, ~2 GB, for 5).
type exactTail struct {
	*onlineOptimum
	k, tail int
}

// open is the number of GPUs in s that can take another partition, and
// their classes.
func (r exactTail) open(s []int) (n int, classes []int) {
	classes = make([]int, len(s))
	for i, m := range s {
		classes[i] = r.of[m]
		if !r.full[classes[i]] {
			n++
		}
	}
	return n, classes
}

// estimate is the expected memory slices still to be put in use from s.
func (r exactTail) estimate(s []int, seed uint64) float64 {
	if n, classes := r.open(s); n <= r.tail {
		return r.value(classes)
	}
	total := 0.0
	for j := range r.k {
		rng := rand.New(rand.NewPCG(seed, uint64(j)))
		x := slices.Clone(s)
		used := 0
		for {
			if n, classes := r.open(x); n <= r.tail {
				total += float64(used) + r.value(classes)
				break
			}
			p := rng.IntN(len(r.placements))
			g, mk, ok := r.fullest(x, p)
			if !ok {
				total += float64(used)
				break
			}
			x[g] |= mk
			used += r.size[p]
		}
	}
	return total / float64(r.k)
}

// place is the rule's placement of profile p in state s; the futures of
// every candidate are drawn from the same k seeds.
func (r exactTail) place(s []int, p int, seed uint64) (gpu, mask int, ok bool) {
	best := -1.0
	r.each(s, p, func(g, mk int, next []int) {
		if v := float64(r.size[p]) + r.estimate(next, seed); v > best+1e-12 {
			gpu, mask, best = g, mk, v
		}
	})
	return gpu, mask, best >= 0
}

// h200Masks is the rollout rule (k unset) on a node of gpus H200s, the node's
// GPUs and the offline optimum, for Packing beside it.
func h200Masks(t testing.TB, gpus int) (rollout, []inventory.GPU, *Optimum) {
	t.Helper()
	node := h200Node(t, gpus)
	var profiles []string
	for _, p := range node[0].MIG.Profiles {
		profiles = append(profiles, p.Name)
	}
	if node[0].MIG.MemorySlices() != 8 {
		t.Fatalf("an H200 has %d memory slices; the masks know 8", node[0].MIG.MemorySlices())
	}
	return rollout{masks: newMasks(t, partition.Build(node[0], partition.Options{}), profiles)}, node, NewOptimum(node[0])
}

// newExactTail is the exact-tail rule on the node's GPU model.
func newExactTail(t testing.TB, node []inventory.GPU, k, tail int) exactTail {
	t.Helper()
	var profiles []string
	for _, p := range node[0].MIG.Profiles {
		profiles = append(profiles, p.Name)
	}
	return exactTail{onlineOptimum: newOnlineOptimum(t, partition.Build(node[0], partition.Options{}), profiles), k: k, tail: tail}
}

// TestRolloutPlacesWhatFits: each rule (the rollout and the exact tail)
// places a request on a free placement of its profile, refuses only one
// that has none, and never beats the offline optimum on the benchmark's
// sequences.
func TestRolloutPlacesWhatFits(t *testing.T) {
	r, node, opt := h200Masks(t, 8)
	r.k = 4
	rules := map[string]placeRule{"rollout": r.place, "exact tail": newExactTail(t, node, 4, 2).place}
	for name, place := range rules {
		for seq := range 20 {
			s := make([]int, 8)
			rng := rand.New(rand.NewPCG(uint64(seq), 2026))
			used := 0
			for step := range 64 {
				p := rng.IntN(len(r.placements))
				g, mk, ok := place(s, p, uint64(step))
				if !ok {
					if _, _, fits := r.fullest(s, p); fits {
						t.Fatalf("%s, sequence %d step %d: profile %d refused where it fits: %v", name, seq, step, p, s)
					}
					break
				}
				if !slices.Contains(r.placements[p], mk) || s[g]&mk != 0 {
					t.Fatalf("%s, sequence %d step %d: profile %d placed at %09b on GPU %d, which holds %09b", name, seq, step, p, mk, g, s[g])
				}
				s[g] |= mk
				used += r.size[p]
			}
			best := Packing(rand.New(rand.NewPCG(uint64(seq), 2026)), node, opt).Best
			if got := float64(used) / 64; got > best+1e-9 {
				t.Fatalf("%s, sequence %d: the rule put %.4f in use, above the offline optimum %.4f", name, seq, got, best)
			}
		}
	}
}

// TestExactTailPlaysTheEndGameExactly: once at most tail GPUs of an 8-GPU
// node can take a partition, the exact-tail rule takes a placement that the
// online optimum computed over the GPUs' masks (rawValue, not the classes
// the rule uses) values as highly as any.
func TestExactTailPlaysTheEndGameExactly(t *testing.T) {
	node := h200Node(t, 8)
	r := newExactTail(t, node, 4, 2)
	raw := map[string]float64{}
	rng := rand.New(rand.NewPCG(7, 8))
	checked := 0
	for range 100 {
		// Fill GPUs until at most two can take a partition.
		s := make([]int, 8)
		for step := 0; step < 200; step++ {
			if n, _ := r.open(s); n <= r.tail {
				break
			}
			p := rng.IntN(len(r.placements))
			if g, mk, ok := r.fullest(s, p); ok {
				s[g] |= mk
			}
		}
		if n, _ := r.open(s); n > r.tail {
			continue
		}
		p := rng.IntN(len(r.placements))
		g, mk, ok := r.place(s, p, 0)
		best := -1.0
		for h := range s {
			for _, m := range r.placements[p] {
				if s[h]&m == 0 {
					next := slices.Clone(s)
					next[h] |= m
					best = max(best, float64(r.size[p])+r.rawValue(next, raw))
				}
			}
		}
		if !ok {
			if best >= 0 {
				t.Fatalf("%09b: profile %d refused where it fits", s, p)
			}
			continue
		}
		next := slices.Clone(s)
		next[g] |= mk
		if got := float64(r.size[p]) + r.rawValue(next, raw); got < best-1e-9 {
			t.Fatalf("%09b: profile %d placed at %09b on GPU %d, worth %.6f; the best placement is worth %.6f", s, p, mk, g, got, best)
		}
		checked++
	}
	if checked < 50 {
		t.Fatalf("only %d end-game states checked", checked)
	}
}

// BenchmarkRolloutRule puts the rollout rule beside first fit in
// Tessera's order (kube-scheduler), partition.BestFit (tessera-scheduler)
// and the offline optimum, on BenchmarkPacking's 1,000 sequences on one
// 8 × H200 node.
//
//	go test -run '^$' -bench RolloutRule -benchtime 1x -timeout 30m ./research/scheduling/
func BenchmarkRolloutRule(b *testing.B) {
	for _, k := range []int{16, 64, 256, 1024} {
		b.Run(fmt.Sprintf("futures=%d", k), func(b *testing.B) {
			r, node, opt := h200Masks(b, 8)
			r.k = k
			for b.Loop() {
				const sequences = 1000
				var sum PackingResult
				var rolled float64
				var decisions int
				var took time.Duration
				for seq := range sequences {
					res := Packing(rand.New(rand.NewPCG(uint64(seq), 2026)), node, opt)
					sum.Add(res)
					start := time.Now()
					used, placed := r.pack(rand.New(rand.NewPCG(uint64(seq), 2026)), len(node), r.place)
					took += time.Since(start)
					rolled += used
					decisions += placed
				}
				b.ReportMetric(100*rolled/sum.Best, "%of-best-rollout")
				b.ReportMetric(100*sum.Tessera/sum.Best, "%of-best-tessera")
				b.ReportMetric(100*sum.BestFit/sum.Best, "%of-best-bestfit")
				b.ReportMetric(100*rolled/sequences, "%used-rollout")
				// The rule's own time: what it would add to a node's filter.
				b.ReportMetric(float64(took.Microseconds())/float64(decisions), "µs/decision")
			}
		})
	}
}

// BenchmarkExactTailRollout puts the exact-tail rule beside the packing
// benchmark's rules on its 1,000 sequences on one 8 × H200 node: the
// rollout with an exact end game once at most 4 or 5 GPUs can take a
// partition. The optimum's table is built once, by the first case that
// needs it; its time is reported apart from the rule's time per decision.
//
//	go test -run '^$' -bench ExactTailRollout -benchtime 1x -timeout 60m ./research/scheduling/
func BenchmarkExactTailRollout(b *testing.B) {
	node := h200Node(b, 8)
	opt := NewOptimum(node[0])
	r := newExactTail(b, node, 0, 0)
	var sum PackingResult
	const sequences = 1000
	for seq := range sequences {
		res := Packing(rand.New(rand.NewPCG(uint64(seq), 2026)), node, opt)
		sum.Add(res)
	}
	for _, c := range []struct{ tail, k int }{{4, 64}, {4, 1024}, {5, 256}, {5, 1024}} {
		b.Run(fmt.Sprintf("tail=%d/futures=%d", c.tail, c.k), func(b *testing.B) {
			r.tail, r.k = c.tail, c.k
			start := time.Now()
			r.value(r.start(c.tail)) // the table of every state of tail GPUs
			table := time.Since(start)
			for b.Loop() {
				var packed float64
				var decisions int
				start := time.Now()
				for seq := range sequences {
					used, placed := r.pack(rand.New(rand.NewPCG(uint64(seq), 2026)), len(node), r.place)
					packed += used
					decisions += placed
				}
				took := time.Since(start)
				b.ReportMetric(100*packed/sum.Best, "%of-best-exact-tail")
				b.ReportMetric(100*sum.Tessera/sum.Best, "%of-best-tessera")
				b.ReportMetric(100*sum.BestFit/sum.Best, "%of-best-bestfit")
				b.ReportMetric(float64(took.Microseconds())/float64(decisions), "µs/decision")
				b.ReportMetric(table.Seconds(), "s-table")
				b.ReportMetric(float64(len(r.memo)), "states")
			}
		})
	}
}
