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
	for g := range s {
		if slices.Index(s, s[g]) < g {
			continue
		}
		for _, mk := range r.placements[p] {
			if s[g]&mk != 0 {
				continue
			}
			next := slices.Clone(s)
			next[g] |= mk
			v := 0
			for j := range r.k {
				v += r.future(next, rand.New(rand.NewPCG(seed, uint64(j))), n)
			}
			if v > best {
				gpu, mask, best = g, mk, v
			}
		}
	}
	return gpu, mask, best >= 0
}

// pack places, on an empty node of n GPUs, the requests Packing draws from
// rng, up to the first that cannot be placed, and returns the share of the
// node's memory slices in use and the number of requests it placed.
func (r rollout) pack(rng *rand.Rand, n int) (used float64, placed int) {
	s := make([]int, n)
	total := 8 * n
	inUse := 0
	for step := range total {
		p := rng.IntN(len(r.placements))
		g, mk, ok := r.place(s, p, uint64(step))
		if !ok {
			break
		}
		s[g] |= mk
		inUse += r.size[p]
		placed++
	}
	return float64(inUse) / float64(total), placed
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

// TestRolloutPlacesWhatFits: the rule places a request on a free placement
// of its profile, refuses only one that has none, and never beats the
// offline optimum on the benchmark's sequences.
func TestRolloutPlacesWhatFits(t *testing.T) {
	r, node, opt := h200Masks(t, 8)
	r.k = 4
	for seq := range 20 {
		s := make([]int, 8)
		rng := rand.New(rand.NewPCG(uint64(seq), 2026))
		used := 0
		for step := range 64 {
			p := rng.IntN(len(r.placements))
			g, mk, ok := r.place(s, p, uint64(step))
			if !ok {
				if _, _, fits := r.fullest(s, p); fits {
					t.Fatalf("sequence %d step %d: profile %d refused where it fits: %v", seq, step, p, s)
				}
				break
			}
			if !slices.Contains(r.placements[p], mk) || s[g]&mk != 0 {
				t.Fatalf("sequence %d step %d: profile %d placed at %09b on GPU %d, which holds %09b", seq, step, p, mk, g, s[g])
			}
			s[g] |= mk
			used += r.size[p]
		}
		best := Packing(rand.New(rand.NewPCG(uint64(seq), 2026)), node, opt).Best
		if got := float64(used) / 64; got > best+1e-9 {
			t.Fatalf("sequence %d: the rule put %.4f in use, above the offline optimum %.4f", seq, got, best)
		}
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
					sum.Tessera += res.Tessera
					sum.BestFit += res.BestFit
					sum.Best += res.Best
					start := time.Now()
					used, placed := r.pack(rand.New(rand.NewPCG(uint64(seq), 2026)), len(node))
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
