package scheduling

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"testing"

	"github.com/tessera-gpu/tessera/pkg/inventory"
	"github.com/tessera-gpu/tessera/pkg/partition"
)

// newBestFitRequested is BestFit's replay with only the node's MIG devices
// in the measure: what partition.BestFit would do if it weighed each class
// it could block by the demand for that class, on a workload (the packing
// benchmark's) that asks for MIG partitions only, so that blocking a whole
// or shared device costs nothing. The candidates are the same; only what
// taking each costs changes.
func newBestFitRequested(gpus []partition.GPU) *BestFit {
	b := &BestFit{left: map[string]map[string]int64{}}
	for _, g := range gpus {
		b.left[g.CounterSet] = maps.Clone(g.Counters)
		for _, d := range g.Devices {
			if d.Kind != partition.KindMIG {
				continue
			}
			b.devices = append(b.devices, partition.Choice{CounterSet: g.CounterSet, Class: d.Profile.Name, Consumes: d.Consumes})
			b.names = append(b.names, d.Name)
		}
	}
	return b
}

// packWith places the sequence rng draws (each of the GPUs' profiles
// equally likely, as Packing draws them) with p on an empty node until the
// first request that cannot be placed, and returns the share of memory
// slices in use.
func packWith(rng *rand.Rand, gpus []inventory.GPU, p placer) float64 {
	return packMix(rng, gpus, nil, p)
}

// packMix is packWith with profile i drawn in proportion to mix[i] (each
// alike when mix is nil); p nil is the offline optimum, the longest prefix
// of the sequence that fits at all.
func packMix(rng *rand.Rand, gpus []inventory.GPU, mix []float64, p placer) float64 {
	profiles := gpus[0].MIG.Profiles
	total, used := 0, 0
	for _, g := range gpus {
		total += g.MIG.MemorySlices()
	}
	var opt *Optimum
	need := make([]int, len(profiles))
	if p == nil {
		opt = NewOptimum(gpus[0])
	}
	for range total {
		i := drawProfile(rng, len(profiles), mix)
		need[i]++
		if opt != nil && !opt.Feasible(need, len(gpus)) || opt == nil && p.Place(profiles[i].Name) == "" {
			break
		}
		used += profiles[i].Placements[0].Size
	}
	return float64(used) / float64(total)
}

func builtNode(gpus []inventory.GPU) []partition.GPU {
	var out []partition.GPU
	for _, g := range gpus {
		out = append(out, partition.Build(g, partition.Options{}))
	}
	return out
}

// TestBestFitRequestedReplay: packWith replays BestFit exactly as Packing
// does, and leaving the whole and shared devices out of the measure changes
// nothing on one GPU (they are blocked by every candidate alike there) but
// changes placements on eight.
func TestBestFitRequestedReplay(t *testing.T) {
	one, eight := h200Node(t, 1), h200Node(t, 8)
	differ := 0
	for seq := range 30 {
		rng := func() *rand.Rand { return rand.New(rand.NewPCG(uint64(seq), 2026)) }
		want := Packing(rng(), eight, NewOptimum(eight[0])).BestFit
		if got := packWith(rng(), eight, NewBestFit(builtNode(eight))); got != want {
			t.Fatalf("sequence %d: packWith gives %.4f with BestFit, Packing %.4f", seq, got, want)
		}
		shipped, requested := NewBestFit(builtNode(one)), newBestFitRequested(builtNode(one))
		r := rng()
		for step := range 16 {
			profile := one[0].MIG.Profiles[r.IntN(len(one[0].MIG.Profiles))].Name
			a, b := shipped.Place(profile), requested.Place(profile)
			if a != b {
				t.Fatalf("sequence %d step %d: one GPU, %s placed at %q with whole and shared devices weighed, %q without", seq, step, profile, a, b)
			}
			if a == "" {
				break
			}
		}
		if packWith(rng(), eight, newBestFitRequested(builtNode(eight))) != want {
			differ++
		}
	}
	if differ == 0 {
		t.Error("on eight GPUs, leaving whole and shared devices out of the measure changed no sequence's result")
	}
}

// BenchmarkPackingDemand puts tessera-scheduler's choice (partition.BestFit
// weighed by the demand it has learned, NewWeightedBestFit) beside BestFit
// unweighted, as it was before it learned the demand, and beside BestFit
// with only the whole and shared devices left out of its measure
// (newBestFitRequested), one 8 x H200 node: on the packing benchmark's 1,000
// sequences, on 1,000 others (the seeds StrandedSliceCost was chosen on), on
// 500 sequences of each of five request mixes written by hand (those
// demandExponent was chosen on) and of five drawn at random (each profile's
// weight exponential, seeded), which were not looked at before it was
// chosen. Each demand has seen warmDemand requests of its mix first.
//
//	go test -run '^$' -bench PackingDemand -benchtime 1x -timeout 30m ./research/scheduling/
func BenchmarkPackingDemand(b *testing.B) {
	gpus := h200Node(b, 8)
	profiles := gpus[0].MIG.Profiles
	opt := NewOptimum(gpus[0])
	report := func(b *testing.B, best, shipped, requested, weighted float64) {
		b.ReportMetric(100*shipped/best, "%of-best-bestfit")
		b.ReportMetric(100*requested/best, "%of-best-bestfit-requested")
		b.ReportMetric(100*weighted/best, "%of-best-weighted")
	}
	sets := []struct {
		name string
		rng  func(seq int) *rand.Rand
	}{
		{"benchmark", func(seq int) *rand.Rand { return rand.New(rand.NewPCG(uint64(seq), 2026)) }},
		{"others", func(seq int) *rand.Rand { return rand.New(rand.NewPCG(uint64(seq+5000), 77)) }},
	}
	for _, set := range sets {
		b.Run(set.name, func(b *testing.B) {
			for b.Loop() {
				var sum PackingResult
				var requested float64
				demand := WarmDemand(rand.New(rand.NewPCG(2027, 1)), profiles, nil, warmDemand)
				for seq := range 1000 {
					r := PackingWeighted(set.rng(seq), gpus, opt, demand)
					sum.Add(r)
					requested += packWith(set.rng(seq), gpus, newBestFitRequested(builtNode(gpus)))
				}
				report(b, sum.Best, sum.BestFit, requested, sum.Weighted)
			}
		})
	}
	mixes := demandMixes(b, profiles)
	for _, m := range mixes {
		b.Run("mix="+m.name, func(b *testing.B) {
			b.Logf("mix %s: %.2f", m.name, m.mix)
			for b.Loop() {
				var best, shipped, requested, weighted float64
				demand := WarmDemand(rand.New(rand.NewPCG(2027, 1)), profiles, m.mix, warmDemand)
				for seq := range 500 {
					rng := func() *rand.Rand { return rand.New(rand.NewPCG(uint64(seq), 4242)) }
					best += packMix(rng(), gpus, m.mix, nil)
					shipped += packMix(rng(), gpus, m.mix, NewBestFit(builtNode(gpus)))
					requested += packMix(rng(), gpus, m.mix, newBestFitRequested(builtNode(gpus)))
					weighted += packMix(rng(), gpus, m.mix, NewWeightedBestFit(builtNode(gpus), demand))
				}
				report(b, best, shipped, requested, weighted)
			}
		})
	}
}

// demandMix is a request mix of BenchmarkPackingDemand: each profile's weight,
// in the H200's order.
type demandMix struct {
	name string
	mix  []float64
}

// demandMixes are BenchmarkPackingDemand's ten mixes: five written by hand
// (those demandExponent was chosen on) and five drawn at random (each
// profile's weight exponential, seeded).
func demandMixes(b *testing.B, profiles []inventory.MIGProfile) []demandMix {
	// Weights by profile, in the H200's order: 1g.18gb, 2g.35gb, 3g.71gb,
	// 4g.71gb, 7g.141gb, 1g.18gb+me, 1g.35gb.
	mixes := []demandMix{
		{"small-heavy", []float64{3, 3, 3, 1, 1, 1, 1}},
		{"large-heavy", []float64{1, 1, 1, 1, 3, 3, 3}},
		{"no-1g.35gb", []float64{1, 1, 1, 1, 1, 1, 0}},
		{"1g-heavy", []float64{5, 1, 1, 1, 1, 1, 1}},
		{"4g-and-+me-heavy", []float64{1, 1, 1, 4, 1, 4, 1}},
	}
	if len(profiles) != 7 || profiles[0].Name != "1g.18gb" || profiles[6].Name != "1g.35gb" {
		b.Fatalf("the mixes are written for the H200's seven profiles in its order, got %v", profiles)
	}
	drawn := rand.New(rand.NewPCG(31337, 7))
	for k := range 5 {
		mix := make([]float64, len(profiles))
		for i := range mix {
			mix[i] = drawn.ExpFloat64()
		}
		mixes = append(mixes, demandMix{fmt.Sprintf("drawn-%d", k+1), mix})
	}
	return mixes
}
