package partition_test

import (
	"maps"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/tessera-gpu/tessera/pkg/partition"
	"github.com/tessera-gpu/tessera/pkg/partition/partitiontest"
)

// node is n H200s as the placement choice sees them.
type node struct {
	devices []partition.Choice
	names   []string
	left    map[string]map[string]int64
}

func newNode(n int) *node {
	nd := &node{left: map[string]map[string]int64{}}
	for i := range n {
		g := partition.Build(h200(i), partition.Options{})
		nd.left[g.CounterSet] = maps.Clone(g.Counters)
		for _, d := range g.Devices {
			class := string(d.Kind)
			if d.Kind == partition.KindMIG {
				class = d.Profile.Name
			}
			nd.devices = append(nd.devices, partition.Choice{CounterSet: g.CounterSet, Class: class, Consumes: d.Consumes})
			nd.names = append(nd.names, d.Name)
		}
	}
	return nd
}

func (nd *node) take(t testing.TB, name string) {
	t.Helper()
	i := slices.Index(nd.names, name)
	if i < 0 || !partition.Fits(nd.left[nd.devices[i].CounterSet], nd.devices[i].Consumes) {
		t.Fatalf("cannot take %s", name)
	}
	for c, n := range nd.devices[i].Consumes {
		nd.left[nd.devices[i].CounterSet][c] -= n
	}
}

// free returns the devices of the class that fit, in published order: what
// the allocator would offer the rule for a request of that class.
func (nd *node) free(class string) []int {
	var out []int
	for i, d := range nd.devices {
		if d.Class == class && partition.Fits(nd.left[d.CounterSet], d.Consumes) {
			out = append(out, i)
		}
	}
	return out
}

func TestBestFit(t *testing.T) {
	tests := map[string]struct {
		taken     []string
		class     string
		firstFit  string
		wantFirst string
	}{
		// All GPUs alike: the rule keeps the static packing order.
		"empty node keeps the packing order": {class: "1g.18gb", firstFit: "gpu-0-mig-1g18gb-6", wantFirst: "gpu-0-mig-1g18gb-6"},
		// GPU 0 is empty and GPU 1 half cut: first fit cuts GPU 0, the
		// rule keeps it whole and fills GPU 1's other half.
		"a cut GPU before an empty one": {
			taken: []string{"gpu-1-mig-3g71gb-4"}, class: "1g.18gb",
			firstFit: "gpu-0-mig-1g18gb-6", wantFirst: "gpu-1-mig-1g18gb-3",
		},
		// A 1g at GPU 0's slice 6 would strand its slice 7 (only the
		// 1g.35gb at 6 and the full partition use it); GPU 1's slice 7 is
		// stranded already, by the +me partition at 6, so the rule takes
		// GPU 1's slice 5, which strands nothing.
		"a slice not stranded": {
			taken: []string{"gpu-0-mig-2g35gb-4", "gpu-1-mig-1g18gb-me-6"}, class: "1g.18gb",
			firstFit: "gpu-0-mig-1g18gb-6", wantFirst: "gpu-1-mig-1g18gb-5",
		},
		// The last free 4g placement of the node is kept free.
		"the last 4g placement kept": {
			taken: []string{"gpu-0-mig-3g71gb-4", "gpu-1-mig-3g71gb-4", "gpu-1-mig-1g18gb-0"}, class: "1g.35gb",
			firstFit: "gpu-0-mig-1g35gb-2", wantFirst: "gpu-1-mig-1g35gb-2",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			nd := newNode(2)
			for _, d := range tc.taken {
				nd.take(t, d)
			}
			candidates := nd.free(tc.class)
			if got := nd.names[candidates[0]]; got != tc.firstFit {
				t.Fatalf("first fit = %s, want %s", got, tc.firstFit)
			}
			if got := nd.names[partition.BestFit(nd.devices, nd.left, candidates)[0]]; got != tc.wantFirst {
				t.Errorf("BestFit first = %s, want %s", got, tc.wantFirst)
			}
		})
	}
}

// TestBestFitOnlyOrders: over random states of a node and random candidates,
// fitting or not, BestFit returns exactly the candidates, and its first is a
// device that fits whenever one of them does.
func TestBestFitOnlyOrders(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for state := range 400 {
		nd, candidates, anyFits := randomState(t, rng)
		got := partition.BestFit(nd.devices, nd.left, candidates)
		if !slices.Equal(slices.Sorted(slices.Values(got)), slices.Sorted(slices.Values(candidates))) {
			t.Fatalf("state %d: BestFit returned %v for candidates %v", state, got, candidates)
		}
		if anyFits && !partition.Fits(nd.left[nd.devices[got[0]].CounterSet], nd.devices[got[0]].Consumes) {
			t.Fatalf("state %d: BestFit ranks %s first, which does not fit, before a candidate that does", state, nd.names[got[0]])
		}
	}
}

// randomState is a node of three H200s with up to 11 random devices taken
// where they fit, and random candidates, a quarter of its devices, fitting
// or not; anyFits is whether one of them fits.
func randomState(t *testing.T, rng *rand.Rand) (nd *node, candidates []int, anyFits bool) {
	t.Helper()
	nd = newNode(3)
	for range rng.IntN(12) {
		i := rng.IntN(len(nd.devices))
		if partition.Fits(nd.left[nd.devices[i].CounterSet], nd.devices[i].Consumes) {
			nd.take(t, nd.names[i])
		}
	}
	for i, d := range nd.devices {
		if rng.IntN(4) == 0 {
			candidates = append(candidates, i)
			anyFits = anyFits || partition.Fits(nd.left[d.CounterSet], d.Consumes)
		}
	}
	return nd, candidates, anyFits
}

// TestBestFitWeighted: weights of 1 rank as BestFit does, over random
// states and candidates; a class weighed 0 is no longer kept free (the
// last 4g placement, which BestFit keeps, is taken when nobody asks for
// 4g partitions); and with random weights the result is still exactly the
// candidates, a fitting one first.
func TestBestFitWeighted(t *testing.T) {
	nd := newNode(2)
	for _, d := range []string{"gpu-0-mig-3g71gb-4", "gpu-1-mig-3g71gb-4", "gpu-1-mig-1g18gb-0"} {
		nd.take(t, d)
	}
	p := partition.Prepare(nd.devices)
	candidates := nd.free("1g.35gb")
	if got := nd.names[p.Left(nd.left).BestFit(candidates)[0]]; got != "gpu-1-mig-1g35gb-2" {
		t.Fatalf("BestFit first = %s, want gpu-1-mig-1g35gb-2, which keeps the last 4g placement", got)
	}
	noLarge := p.Weigh(func(class string) float64 {
		if class == "3g.71gb" || class == "4g.71gb" {
			return 0
		}
		return 1
	})
	if got := nd.names[p.Left(nd.left).BestFitWeighted(candidates, noLarge)[0]]; got != "gpu-0-mig-1g35gb-2" {
		t.Errorf("weighted first = %s, want gpu-0-mig-1g35gb-2: the 3g and 4g placements it blocks weigh nothing", got)
	}

	rng := rand.New(rand.NewPCG(3, 4))
	ones := func(string) float64 { return 1 }
	for state := range 300 {
		nd, candidates, anyFits := randomState(t, rng)
		p := partition.Prepare(nd.devices)
		left := p.Left(nd.left)
		want := left.BestFit(candidates)
		if got := left.BestFitWeighted(candidates, p.Weigh(ones)); !slices.Equal(got, want) {
			t.Fatalf("state %d: weights of 1 rank %v, BestFit %v", state, got, want)
		}
		random := map[string]float64{}
		got := left.BestFitWeighted(candidates, p.Weigh(func(class string) float64 {
			if _, ok := random[class]; !ok {
				random[class] = rng.Float64()
			}
			return random[class]
		}))
		if !slices.Equal(slices.Sorted(slices.Values(got)), slices.Sorted(slices.Values(candidates))) {
			t.Fatalf("state %d: weighted returned %v for candidates %v", state, got, candidates)
		}
		if anyFits && !partition.Fits(nd.left[nd.devices[got[0]].CounterSet], nd.devices[got[0]].Consumes) {
			t.Fatalf("state %d: weighted ranks %s first, which does not fit, before a candidate that does", state, nd.names[got[0]])
		}
	}
}

// TestBestFitMatchesMapRule: over random states of nodes of 2 and 8 H200s,
// with random candidates that fit or not, devices of no counter set and a
// device that consumes a counter its set does not list, BestFit returns
// exactly the order of the rule as first written over maps (partitiontest.BestFitMaps):
// the dense vectors change its cost, not its result.
func TestBestFitMatchesMapRule(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for state := range 300 {
		nd := newNode(2 + 6*(state%2))
		for range rng.IntN(24) {
			i := rng.IntN(len(nd.devices))
			if partition.Fits(nd.left[nd.devices[i].CounterSet], nd.devices[i].Consumes) {
				nd.take(t, nd.names[i])
			}
		}
		nd.devices = append(nd.devices, partition.Choice{}, partition.Choice{CounterSet: "gpu-0", Class: "odd", Consumes: map[string]int64{"unlisted": 1 - int64(rng.IntN(2))}})
		var candidates []int
		for i := range nd.devices {
			if rng.IntN(3) == 0 {
				candidates = append(candidates, i)
			}
		}
		want := partitiontest.BestFitMaps(nd.devices, nd.left, candidates)
		if got := partition.BestFit(nd.devices, nd.left, candidates); !slices.Equal(got, want) {
			t.Fatalf("state %d: BestFit %v, the map rule %v", state, got, want)
		}
		// Prepared once, ranked in the next states too, from maps and
		// from a Left that follows the same changes.
		prepared := partition.Prepare(nd.devices)
		left := prepared.Left(nd.left)
		for step := range 3 {
			for i := range nd.devices[:len(nd.devices)-2] {
				if rng.IntN(40) == 0 && partition.Fits(nd.left[nd.devices[i].CounterSet], nd.devices[i].Consumes) {
					nd.take(t, nd.names[i])
					left.Take(i)
				}
			}
			if rng.IntN(3) == 0 {
				set := nd.devices[rng.IntN(len(nd.devices)-2)].CounterSet
				clear(nd.left[set])
				left.Empty(set)
			}
			for i, d := range nd.devices {
				if got, want := left.Fits(i), partition.Fits(nd.left[d.CounterSet], d.Consumes); got != want {
					t.Fatalf("state %d, step %d: Left.Fits(%d) %v, Fits %v", state, step, i, got, want)
				}
			}
			want := partitiontest.BestFitMaps(nd.devices, nd.left, candidates)
			if got := prepared.BestFit(nd.left, candidates); !slices.Equal(got, want) {
				t.Fatalf("state %d, step %d: Prepared.BestFit %v, the map rule %v", state, step, got, want)
			}
			if got := left.Clone().BestFit(candidates); !slices.Equal(got, want) {
				t.Fatalf("state %d, step %d: Left.BestFit %v, the map rule %v", state, step, got, want)
			}
		}
	}
}

// BenchmarkBestFit ranks the free 1g.18gb partitions of a node of 8 H200s
// with a 3g partition on GPU 0 and a 1g on GPU 1 (the Score benchmark's
// state, research/scheduler): the rule over dense vectors (BestFit), with
// the devices prepared once (Prepared.BestFit), and as first written over
// maps, side by side.
//
//	go test -run '^$' -bench BestFit ./pkg/partition/
func BenchmarkBestFit(b *testing.B) {
	nd := newNode(8)
	nd.take(b, "gpu-0-mig-3g71gb-4")
	nd.take(b, "gpu-1-mig-1g18gb-6")
	candidates := nd.free("1g.18gb")
	prepared := partition.Prepare(nd.devices)
	for name, rule := range map[string]func([]partition.Choice, map[string]map[string]int64, []int) []int{
		"rule=dense": partition.BestFit, "rule=maps": partitiontest.BestFitMaps,
		"rule=prepared": func(_ []partition.Choice, left map[string]map[string]int64, candidates []int) []int {
			return prepared.BestFit(left, candidates)
		},
	} {
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				rule(nd.devices, nd.left, candidates)
			}
		})
	}
}
