package scheduling

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/tessera-gpu/tessera/research/scheduler"
)

// BenchmarkFinalChoice puts tessera-scheduler's final choice (the weighted
// BestFit order, then partition.Left.Rollout with scheduler.FinalFutures
// futures drawn from the demand's shares: NewRolloutChoice, checked against
// the patched allocator by TestFinalChoiceMatchesRollout) beside the weighted
// BestFit choice alone (what tessera-scheduler's Filter ranks, and what it
// kept before the final choice) and first fit (kube-scheduler), one 8 x H200
// node, on the sequences of BenchmarkPackingDemand: the packing benchmark's
// 1,000, 1,000 others, and 500 of each of its ten mixes, each against its
// own offline best. Each demand has seen warmDemand requests of its mix
// first; the final choice's demand is its own, told the same requests, so
// the two choices learn alike. The final choice's time per request placed
// is reported too (its own, on this machine).
//
//	go test -run '^$' -bench FinalChoice -benchtime 1x -timeout 60m ./research/scheduling/
func BenchmarkFinalChoice(b *testing.B) {
	gpus := h200Node(b, 8)
	profiles := gpus[0].MIG.Profiles
	type set struct {
		name      string
		mix       []float64
		sequences int
		rng       func(seq int) *rand.Rand
	}
	sets := []set{
		{"benchmark", nil, 1000, func(seq int) *rand.Rand { return rand.New(rand.NewPCG(uint64(seq), 2026)) }},
		{"others", nil, 1000, func(seq int) *rand.Rand { return rand.New(rand.NewPCG(uint64(seq+5000), 77)) }},
	}
	for _, m := range demandMixes(b, profiles) {
		sets = append(sets, set{"mix=" + m.name, m.mix, 500, func(seq int) *rand.Rand { return rand.New(rand.NewPCG(uint64(seq), 4242)) }})
	}
	for _, s := range sets {
		b.Run(s.name, func(b *testing.B) {
			for b.Loop() {
				var best, firstFit, weighted, final float64
				var took time.Duration
				var requests int
				warm := func() *scheduler.Demand {
					return WarmDemand(rand.New(rand.NewPCG(2027, 1)), profiles, s.mix, warmDemand)
				}
				wd, fd := warm(), warm()
				for seq := range s.sequences {
					best += packMix(s.rng(seq), gpus, s.mix, nil)
					firstFit += packMix(s.rng(seq), gpus, s.mix, NewFirstFit(builtNode(gpus)))
					weighted += packMix(s.rng(seq), gpus, s.mix, NewWeightedBestFit(builtNode(gpus), wd))
					rc := &countingPlacer{placer: NewRolloutChoice(builtNode(gpus), fd, scheduler.FinalFutures)}
					start := time.Now()
					final += packMix(s.rng(seq), gpus, s.mix, rc)
					took += time.Since(start)
					requests += rc.requests
				}
				b.ReportMetric(100*firstFit/best, "%of-best-firstfit")
				b.ReportMetric(100*weighted/best, "%of-best-weighted")
				b.ReportMetric(100*final/best, "%of-best-final")
				b.ReportMetric(float64(took.Microseconds())/1000/float64(requests), "ms/request")
			}
		})
	}
}

// countingPlacer counts the requests a placer is asked to place.
type countingPlacer struct {
	placer
	requests int
}

func (c *countingPlacer) Place(profile string) string {
	c.requests++
	return c.placer.Place(profile)
}
