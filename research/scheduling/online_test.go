package scheduling

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/tessera-gpu/tessera/pkg/partition"
)

// onlineOptimum is the best any placement rule can do on the packing
// benchmark without knowing the requests to come: the value of the Markov
// decision process whose state is what each GPU has taken (memory slices and
// the media-engine set, as a 9-bit mask) and whose steps are the uniformly
// drawn profiles, ending at the first that cannot be placed. Exact, by
// memoised recursion over the states reachable from an empty node; GPUs are
// interchangeable, so a state is the sorted list of masks.
type onlineOptimum struct {
	masks
	memo map[uint64]float64
}

// masks is an H200's MIG placements as 9-bit masks (the eight memory
// slices and the media-engine set) per profile, in Tessera's published
// order, with each profile's size in memory slices.
type masks struct {
	placements [][]int
	size       []int
}

func newMasks(t testing.TB, g partition.GPU, profiles []string) masks {
	m := masks{placements: make([][]int, len(profiles)), size: make([]int, len(profiles))}
	for _, d := range g.Devices {
		if d.Kind != partition.KindMIG {
			continue
		}
		mask := 0
		for c := range d.Consumes {
			var i int
			if _, err := fmt.Sscanf(c, "memory-slice-%d", &i); err == nil {
				mask |= 1 << i
			} else if c == "ofa-engines" {
				mask |= 1 << 8
			} else {
				t.Fatalf("%s consumes %s, which the model does not know", d.Name, c)
			}
		}
		p := slices.Index(profiles, d.Profile.Name)
		m.placements[p] = append(m.placements[p], mask)
		m.size[p] = d.Placement.Size
	}
	return m
}

func newOnlineOptimum(t testing.TB, g partition.GPU, profiles []string) *onlineOptimum {
	return &onlineOptimum{masks: newMasks(t, g, profiles), memo: map[uint64]float64{}}
}

// value is the expected number of memory slices the best online rule puts
// in use from the state on.
func (o *onlineOptimum) value(state []int) float64 {
	s := slices.Clone(state)
	slices.Sort(s)
	var key uint64
	for _, m := range s {
		key = key<<9 | uint64(m)
	}
	if v, ok := o.memo[key]; ok {
		return v
	}
	total := 0.0
	for p, masks := range o.placements {
		best := 0.0
		for g := range s {
			if g > 0 && s[g] == s[g-1] {
				continue
			}
			for _, m := range masks {
				if s[g]&m != 0 {
					continue
				}
				next := slices.Clone(s)
				next[g] |= m
				best = max(best, float64(o.size[p])+o.value(next))
			}
		}
		total += best
	}
	v := total / float64(len(o.placements))
	o.memo[key] = v
	return v
}

// BenchmarkOnlineOptimum compares, on nodes of 1 to 3 H200s (8 GPUs are
// out of reach of the exact computation), the best online placement rule
// with the exhaustive optimum that knows the whole sequence, and with first
// fit in Tessera's order and partition.BestFit (the mean over 5,000 seeded
// sequences, as BenchmarkPacking measures them). The online optimum is an
// exact expectation, the other figures means over the sequences, so they
// differ from it by sampling noise too (a few tenths of a point).
//
//	go test -run '^$' -bench OnlineOptimum -benchtime 1x -timeout 30m ./research/scheduling/
func BenchmarkOnlineOptimum(b *testing.B) {
	for _, n := range []int{1, 2, 3} {
		b.Run(fmt.Sprintf("gpus=%d", n), func(b *testing.B) {
			gpus := h200Node(b, n)
			var profiles []string
			for _, p := range gpus[0].MIG.Profiles {
				profiles = append(profiles, p.Name)
			}
			opt := NewOptimum(gpus[0])
			for b.Loop() {
				o := newOnlineOptimum(b, partition.Build(gpus[0], partition.Options{}), profiles)
				online := o.value(make([]int, n)) / float64(n*gpus[0].MIG.MemorySlices())
				const sequences = 5000
				var sum PackingResult
				for seq := range sequences {
					r := Packing(rand.New(rand.NewPCG(uint64(seq), 2026)), gpus, opt)
					sum.Tessera += r.Tessera
					sum.BestFit += r.BestFit
					sum.Best += r.Best
				}
				best := sum.Best / sequences
				b.ReportMetric(100*online, "%used-online-optimum")
				b.ReportMetric(100*best, "%used-best")
				b.ReportMetric(100*online/best, "%of-best-online-optimum")
				b.ReportMetric(100*sum.Tessera/sum.Best, "%of-best-tessera")
				b.ReportMetric(100*sum.BestFit/sum.Best, "%of-best-bestfit")
				b.ReportMetric(100*sum.Tessera/sequences, "%used-tessera")
				b.ReportMetric(100*sum.BestFit/sequences, "%used-bestfit")
				b.ReportMetric(float64(len(o.memo)), "states")
			}
		})
	}
}
