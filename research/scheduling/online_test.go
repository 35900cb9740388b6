package scheduling

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/tessera-gpu/tessera/pkg/partition"
)

// onlineOptimum is the best any placement rule can do on the packing
// benchmark without knowing the requests to come: the value of the Markov
// decision process whose state is what each GPU has taken and whose steps are
// the uniformly drawn profiles, ending at the first that cannot be placed.
// Exact, by memoised recursion over the states reachable from an empty node.
//
// A GPU's state is its class (classes): what it has taken matters to the
// future only through which placements are still free on it, and only up to
// the GPU's symmetries. GPUs are interchangeable, so a node's state is the
// sorted list of its GPUs' classes, less the GPUs that can take nothing more.
// On 3 GPUs that is 60 thousand states where the 9-bit masks of what each GPU
// has taken made 9.4 million; TestOnlineClassesAreExact checks that the
// classes change no value.
type onlineOptimum struct {
	masks
	classes
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

// classes numbers the 9-bit masks of what a GPU has taken by what is left
// of it to the future: two masks are in one class when the same placements
// are free on both, or would be after a symmetry of the GPU (a permutation of
// its memory slices that maps every profile's placements onto the profile's:
// on an H200, the two slices of each of the first three pairs, and the first
// two pairs). Placing a partition then leads from masks of one class to masks
// of one class, and the game from them is the same.
type classes struct {
	of   [512]int // of[mask] is the mask's class
	rep  []int    // rep[class] is one of its masks
	full []bool   // full[class]: nothing more can be placed
}

func newClasses(t testing.TB, m masks) classes {
	// all is every profile's placements, as masks, profile by profile;
	// profile p's start at offset[p].
	var all, offset []int
	for _, pl := range m.placements {
		offset = append(offset, len(all))
		all = append(all, pl...)
	}
	// The symmetries: permutations of the eight memory slices (the
	// media-engine bit stays) under which each profile's placements are
	// its placements, each as the permutation it makes of all.
	var symmetries [][]int
	var permute func(perm []int, used int)
	permute = func(perm []int, used int) {
		if len(perm) < 8 {
			for i := range 8 {
				if used&(1<<i) == 0 {
					permute(append(perm, i), used|1<<i)
				}
			}
			return
		}
		image := func(mask int) int {
			out := mask & (1 << 8)
			for i, j := range perm {
				if mask&(1<<i) != 0 {
					out |= 1 << j
				}
			}
			return out
		}
		var of []int
		for p, pl := range m.placements {
			for _, mk := range pl {
				j := slices.Index(m.placements[p], image(mk))
				if j < 0 {
					return
				}
				of = append(of, offset[p]+j)
			}
		}
		symmetries = append(symmetries, of)
	}
	permute(nil, 0)
	if len(symmetries) == 0 {
		t.Fatal("the identity is no symmetry")
	}
	var c classes
	ids := map[uint64]int{}
	for mask := range 512 {
		var free uint64
		for j, mk := range all {
			if mk&mask == 0 {
				free |= 1 << j
			}
		}
		key := uint64(math.MaxUint64)
		for _, of := range symmetries {
			var image uint64
			for j, k := range of {
				image |= (free >> j & 1) << k
			}
			key = min(key, image)
		}
		id, ok := ids[key]
		if !ok {
			id = len(c.rep)
			ids[key] = id
			c.rep = append(c.rep, mask)
			c.full = append(c.full, key == 0)
		}
		c.of[mask] = id
	}
	if len(c.rep) > 255 {
		t.Fatalf("%d classes do not fit the state's key", len(c.rep))
	}
	return c
}

func newOnlineOptimum(t testing.TB, g partition.GPU, profiles []string) *onlineOptimum {
	m := newMasks(t, g, profiles)
	return &onlineOptimum{masks: m, classes: newClasses(t, m), memo: map[uint64]float64{}}
}

// start is the state of an empty node of n GPUs.
func (o *onlineOptimum) start(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = o.of[0]
	}
	return s
}

// value is the expected number of memory slices the best online rule puts
// in use from the state on (each GPU's class, in any order; at most 8).
func (o *onlineOptimum) value(state []int) float64 {
	s := slices.DeleteFunc(slices.Clone(state), func(c int) bool { return o.full[c] })
	slices.Sort(s)
	var key uint64
	for _, c := range s {
		key = key<<8 | uint64(c+1)
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
				if o.rep[s[g]]&m != 0 {
					continue
				}
				next := slices.Clone(s)
				next[g] = o.of[o.rep[s[g]]|m]
				best = max(best, float64(o.size[p])+o.value(next))
			}
		}
		total += best
	}
	v := total / float64(len(o.placements))
	o.memo[key] = v
	return v
}

// rawValue is value over the GPUs' masks themselves, as it was first
// written: the reference TestOnlineClassesAreExact holds the classes to.
func (m masks) rawValue(state []int, memo map[string]float64) float64 {
	s := slices.Clone(state)
	slices.Sort(s)
	k := make([]byte, 0, 2*len(s))
	for _, mk := range s {
		k = append(k, byte(mk>>8), byte(mk))
	}
	key := string(k)
	if v, ok := memo[key]; ok {
		return v
	}
	total := 0.0
	for p, masks := range m.placements {
		best := 0.0
		for g := range s {
			if g > 0 && s[g] == s[g-1] {
				continue
			}
			for _, mk := range masks {
				if s[g]&mk != 0 {
					continue
				}
				next := slices.Clone(s)
				next[g] |= mk
				best = max(best, float64(m.size[p])+m.rawValue(next, memo))
			}
		}
		total += best
	}
	v := total / float64(len(m.placements))
	memo[key] = v
	return v
}

// TestOnlineClassesAreExact: the online optimum over classes is the one over
// masks, from an empty node of 1 and 2 H200s and from random states of 3
// (placed at random, so that the raw recursion stays small); and the
// symmetries found are the H200's 16.
func TestOnlineClassesAreExact(t *testing.T) {
	gpus := h200Node(t, 1)
	var profiles []string
	for _, p := range gpus[0].MIG.Profiles {
		profiles = append(profiles, p.Name)
	}
	o := newOnlineOptimum(t, partition.Build(gpus[0], partition.Options{}), profiles)
	if got := len(o.rep); got >= 512/2 {
		t.Fatalf("%d classes: the masks are hardly merged", got)
	}
	raw := map[string]float64{}
	check := func(masks []int) {
		t.Helper()
		state := make([]int, len(masks))
		for i, m := range masks {
			state[i] = o.of[m]
		}
		got, want := o.value(state), o.rawValue(masks, raw)
		if math.Abs(got-want) > 1e-9 {
			t.Fatalf("from %09b: %.9f over classes, %.9f over masks", masks, got, want)
		}
	}
	check([]int{0})
	check([]int{0, 0})
	rng := rand.New(rand.NewPCG(5, 6))
	for range 20 {
		s := make([]int, 3)
		for range 5 + rng.IntN(4) {
			p := rng.IntN(len(o.placements))
			g := rng.IntN(len(s))
			if mk := o.placements[p][rng.IntN(len(o.placements[p]))]; s[g]&mk == 0 {
				s[g] |= mk
			}
		}
		check(s)
	}
}

// BenchmarkOnlineOptimum compares, on nodes of 1 to 5 H200s (8 GPUs are
// out of reach of the exact computation), the best online placement rule
// with the exhaustive optimum that knows the whole sequence, and with first
// fit in Tessera's order and partition.BestFit (the mean over 5,000 seeded
// sequences, as BenchmarkPacking measures them). The online optimum is an
// exact expectation, the other figures means over the sequences, so they
// differ from it by sampling noise too (a few tenths of a point).
//
//	go test -run '^$' -bench OnlineOptimum -benchtime 1x -timeout 30m ./research/scheduling/
func BenchmarkOnlineOptimum(b *testing.B) {
	for _, n := range []int{1, 2, 3, 4, 5} {
		b.Run(fmt.Sprintf("gpus=%d", n), func(b *testing.B) {
			gpus := h200Node(b, n)
			var profiles []string
			for _, p := range gpus[0].MIG.Profiles {
				profiles = append(profiles, p.Name)
			}
			opt := NewOptimum(gpus[0])
			for b.Loop() {
				o := newOnlineOptimum(b, partition.Build(gpus[0], partition.Options{}), profiles)
				online := o.value(o.start(n)) / float64(n*gpus[0].MIG.MemorySlices())
				const sequences = 5000
				var sum PackingResult
				for seq := range sequences {
					r := Packing(rand.New(rand.NewPCG(uint64(seq), 2026)), gpus, opt)
					sum.Add(r)
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
				b.ReportMetric(float64(len(o.rep)), "gpu-classes")
			}
		})
	}
}
