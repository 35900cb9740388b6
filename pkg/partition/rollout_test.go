package partition_test

import (
	"fmt"
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
// futures drawn from the seven profiles alike.
func BenchmarkRollout(b *testing.B) {
	for _, fill := range []string{"empty", "half"} {
		b.Run(fill, func(b *testing.B) {
			nd := newNode(8)
			if fill == "half" {
				for g := range 8 {
					nd.take(b, fmt.Sprintf("gpu-%d-mig-3g71gb-4", g))
					if g%2 == 0 {
						nd.take(b, fmt.Sprintf("gpu-%d-mig-1g18gb-0", g))
					}
				}
			}
			p := partition.Prepare(nd.devices)
			mix := p.Weigh(func(c string) float64 {
				if c == "gpu" || c == "shared" {
					return 0
				}
				return 1
			})
			candidates := nd.free("1g.18gb")
			left := p.Left(nd.left)
			for b.Loop() {
				left.Rollout(candidates, mix, 256, 0)
			}
		})
	}
}

// TestRolloutWorkIsBounded: the node of TestRolloutKeepsWhatTheFutureAsksFor
// with 8,192 more devices published (a counter set of their own, a class
// nobody asks for) is past Rollout's bound even for one future per group,
// so it plays none and keeps the candidates' order, where on the node
// without them it moves GPU 2's placements first.
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
	if got := p.Left(nd.left).Rollout(candidates, only(p, "7g.141gb"), 4, 1); !slices.Equal(got, candidates) {
		t.Errorf("past the bound Rollout still played: %v", nd.named(got)[:3])
	}
	nd.devices, nd.names = nd.devices[:len(nd.devices)-8192], nd.names[:len(nd.names)-8192]
	p = partition.Prepare(nd.devices)
	if got := p.Left(nd.left).Rollout(candidates, only(p, "7g.141gb"), 4, 1); nd.devices[got[0]].CounterSet != "gpu-2" {
		t.Errorf("within the bound Rollout put %s first, want a placement on GPU 2", nd.names[got[0]])
	}
}
