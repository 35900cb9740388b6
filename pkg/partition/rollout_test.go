package partition_test

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/tessera-gpu/tessera/pkg/partition"
)

// only is a mix that draws the one class.
func only(p *partition.Prepared, class string) []float64 {
	return p.Weigh(func(c string) float64 {
		if c == class {
			return 1
		}
		return 0
	})
}

// TestRolloutKeepsWhatTheFutureAsksFor: on three H200s, GPU 2 cut by a 1g
// partition, a 1g.18gb request. When the futures ask only for 7g partitions,
// each empty GPU left takes one (8 memory slices), so the rollout puts GPU
// 2's placements first, where the candidates came in published order (GPU 0
// first); the empty GPUs' placements at the same place tie and keep their
// order. When the futures ask for nothing, every candidate ties and the order
// is the candidates'.
func TestRolloutKeepsWhatTheFutureAsksFor(t *testing.T) {
	nd := newNode(3)
	nd.take(t, "gpu-2-mig-1g18gb-0")
	p := partition.Prepare(nd.devices)
	candidates := nd.free("1g.18gb")
	got := p.Left(nd.left).Rollout(candidates, only(p, "7g.141gb"), 4, 1)
	if !slices.Equal(slices.Sorted(slices.Values(got)), slices.Sorted(slices.Values(candidates))) {
		t.Fatalf("Rollout returned %v for candidates %v", got, candidates)
	}
	gpu2 := 0
	for _, c := range candidates {
		if nd.devices[c].CounterSet == "gpu-2" {
			gpu2++
		}
	}
	for k, c := range got {
		if onGPU2 := nd.devices[c].CounterSet == "gpu-2"; onGPU2 != (k < gpu2) {
			t.Fatalf("Rollout order %v: %s at %d, want GPU 2's %d placements first", nd.named(got), nd.names[c], k, gpu2)
		}
	}
	if first, second := nd.names[got[gpu2]], nd.names[got[gpu2+1]]; first != "gpu-0-mig-1g18gb-6" || second != "gpu-0-mig-1g18gb-5" {
		t.Errorf("after GPU 2: %s, %s; want GPU 0's placements in the candidates' order (tied with GPU 1's)", first, second)
	}
	if got := p.Left(nd.left).Rollout(candidates, only(p, "none"), 4, 1); !slices.Equal(got, candidates) {
		t.Errorf("with nothing drawn Rollout reordered the candidates: %v", nd.named(got))
	}
}

func (nd *node) named(devices []int) []string {
	out := make([]string, len(devices))
	for k, i := range devices {
		out[k] = nd.names[i]
	}
	return out
}

// TestRolloutOnlyOrders: over random states and candidates, fitting or not,
// with a random mix, Rollout returns exactly the candidates, every fitting
// one before every one that does not fit, and the same order when asked
// again (its futures are a function of the seed).
func TestRolloutOnlyOrders(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for state := range 100 {
		nd, candidates, _ := randomState(t, rng)
		p := partition.Prepare(nd.devices)
		left := p.Left(nd.left)
		mix := p.Weigh(func(string) float64 { return rng.Float64() })
		got := left.Rollout(candidates, mix, 8, uint64(state))
		if !slices.Equal(slices.Sorted(slices.Values(got)), slices.Sorted(slices.Values(candidates))) {
			t.Fatalf("state %d: Rollout returned %v for candidates %v", state, got, candidates)
		}
		fitting := true
		for _, c := range got {
			fits := left.Fits(c)
			if fits && !fitting {
				t.Fatalf("state %d: %s fits but comes after one that does not: %v", state, nd.names[c], nd.named(got))
			}
			fitting = fits
		}
		if again := left.Rollout(candidates, mix, 8, uint64(state)); !slices.Equal(again, got) {
			t.Fatalf("state %d: Rollout ordered %v, then %v", state, got, again)
		}
	}
}

// TestRolloutEnds: a device that consumes nothing always fits; a future that
// keeps drawing it still ends (at most as many requests as there are
// devices), and Rollout does not leave what it was given changed.
func TestRolloutEnds(t *testing.T) {
	nd := newNode(1)
	nd.devices = append(nd.devices, partition.Choice{CounterSet: "gpu-0", Class: "free"})
	nd.names = append(nd.names, "free")
	p := partition.Prepare(nd.devices)
	left := p.Left(nd.left)
	before := left.Clone()
	candidates := nd.free("1g.18gb")
	got := left.Rollout(candidates, only(p, "free"), 16, 0)
	if !slices.Equal(got, candidates) {
		t.Errorf("futures of a device that takes nothing reordered the candidates: %v", nd.named(got))
	}
	for i := range nd.devices {
		if left.Fits(i) != before.Fits(i) {
			t.Fatalf("Rollout changed what is left: %s", nd.names[i])
		}
	}
}

// BenchmarkRollout is the final choice's cost for one request: a 1g.18gb
// partition on an empty node of eight H200s and on one half full, 256
// futures drawn from the seven profiles alike, by Rollout ("tables") and,
// beside it in the same run, by rolloutReference, which orders alike
// (TestRolloutMatchesReference) scanning the devices for every request.
// "bounded" is what a node can make it cost: three H200s and 8,192 counter
// sets of one device more, of a class the futures draw most, so that each
// request looks at every set until the work bound stops the futures (the
// reference's bound, fixed before playing, plays none there).
//
//	go test -run '^$' -bench Rollout -benchtime 50x -count 5 ./pkg/partition/
func BenchmarkRollout(b *testing.B) {
	for _, fill := range []string{"empty", "half", "bounded"} {
		weights := map[string]float64{"gpu": 0, "shared": 0}
		nd := newNode(8)
		switch fill {
		case "half":
			for g := range 8 {
				nd.take(b, fmt.Sprintf("gpu-%d-mig-3g71gb-4", g))
				if g%2 == 0 {
					nd.take(b, fmt.Sprintf("gpu-%d-mig-1g18gb-0", g))
				}
			}
		case "bounded":
			nd = newNode(3)
			for i := range 8192 {
				set := fmt.Sprintf("set-%d", i)
				nd.devices = append(nd.devices, partition.Choice{CounterSet: set, Class: "padding", Consumes: map[string]int64{"n": 1}})
				nd.names = append(nd.names, set)
				nd.left[set] = map[string]int64{"n": 1}
			}
			weights["padding"] = 1000
		}
		p := partition.Prepare(nd.devices)
		mix := p.Weigh(func(c string) float64 {
			if w, ok := weights[c]; ok {
				return w
			}
			return 1
		})
		candidates := nd.free("1g.18gb")
		left := p.Left(nd.left)
		for _, impl := range []struct {
			name    string
			rollout func([]int, []float64, int, uint64) []int
		}{{"reference", left.RolloutReference}, {"tables", left.Rollout}} {
			b.Run(fill+"/"+impl.name, func(b *testing.B) {
				for b.Loop() {
					impl.rollout(candidates, mix, 256, 0)
				}
			})
		}
	}
}

// TestRolloutMatchesReference: Rollout orders as rolloutReference, which
// scans every device of the class drawn for every request, over random
// nodes of one to eight H200s, some counter sets left out of what is left,
// some GPUs with a device more (a set of another shape), random mixes
// (classes weighed 0 among them), seeds and numbers of futures.
func TestRolloutMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	moved := 0
	for state := range 300 {
		nd := newNode(1 + rng.IntN(8))
		for range rng.IntN(30) {
			i := rng.IntN(len(nd.devices))
			if partition.Fits(nd.left[nd.devices[i].CounterSet], nd.devices[i].Consumes) {
				nd.take(t, nd.names[i])
			}
		}
		for _, set := range slices.Sorted(maps.Keys(nd.left)) {
			switch rng.IntN(8) {
			case 0:
				delete(nd.left, set)
			case 1:
				nd.devices = append(nd.devices, partition.Choice{CounterSet: set, Class: "1g.18gb", Consumes: map[string]int64{"extra": 1}})
				nd.names = append(nd.names, set+"-extra")
				nd.left[set]["extra"] = int64(rng.IntN(3))
			}
		}
		class := []string{"1g.18gb", "2g.35gb", "3g.71gb", "4g.71gb", "7g.141gb"}[rng.IntN(5)]
		candidates := nd.free(class)
		p := partition.Prepare(nd.devices)
		mix := p.Weigh(func(string) float64 { return float64(rng.IntN(3)) })
		futures, seed := 1+rng.IntN(64), rng.Uint64()
		left := p.Left(nd.left)
		got := left.Rollout(candidates, mix, futures, seed)
		want := left.RolloutReference(candidates, mix, futures, seed)
		if !slices.Equal(got, want) {
			t.Fatalf("state %d (%d futures of %v): Rollout ordered %v, the reference %v", state, futures, mix, nd.named(got), nd.named(want))
		}
		if !slices.Equal(got, candidates) {
			moved++
		}
	}
	if moved < 60 {
		t.Fatalf("the futures moved the order in only %d of 300 states", moved)
	}
}

// TestRolloutWorkIsBounded: a node of three H200s whose futures mostly draw
// a class of 8,192 more devices published on a counter set of their own
// (each takes one of 8,192 units, so every one a future takes leaves a new
// state of the set, whose table row names 8,192 devices) is past Rollout's
// bounds before one future ends: it plays none and keeps the candidates'
// order, where on the node without them it moves GPU 2's placements first.
func TestRolloutWorkIsBounded(t *testing.T) {
	nd := newNode(3)
	nd.take(t, "gpu-2-mig-1g18gb-0")
	for i := range 8192 {
		nd.devices = append(nd.devices, partition.Choice{CounterSet: "padding", Class: "padding", Consumes: map[string]int64{"n": 1}})
		nd.names = append(nd.names, fmt.Sprintf("padding-%d", i))
	}
	nd.left["padding"] = map[string]int64{"n": 8192}
	p := partition.Prepare(nd.devices)
	candidates := nd.free("1g.18gb")
	mix := p.Weigh(func(c string) float64 {
		switch c {
		case "7g.141gb":
			return 1
		case "padding":
			return 1000
		}
		return 0
	})
	if got := p.Left(nd.left).Rollout(candidates, mix, 4, 1); !slices.Equal(got, candidates) {
		t.Errorf("past the bound Rollout still played: %v", nd.named(got)[:3])
	}
	nd.devices, nd.names = nd.devices[:len(nd.devices)-8192], nd.names[:len(nd.names)-8192]
	p = partition.Prepare(nd.devices)
	if got := p.Left(nd.left).Rollout(candidates, only(p, "7g.141gb"), 4, 1); nd.devices[got[0]].CounterSet != "gpu-2" {
		t.Errorf("within the bound Rollout put %s first, want a placement on GPU 2", nd.names[got[0]])
	}
}
