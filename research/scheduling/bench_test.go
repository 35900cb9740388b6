package scheduling

import (
	"math/rand/v2"
	"testing"
)

// BenchmarkPacking draws seeded random sequences of MIG requests on one
// 8 x H200 node until the first request that cannot be placed and reports
// the mean share of memory slices in use at that point for Tessera's device
// order (the stock allocator's first fit, kube-scheduler), tessera-scheduler's
// choice among the free placements (partition.BestFit weighed by the demand,
// which has seen warmDemand requests of the same mix before the first
// sequence, and each sequence's requests as they come; and unweighted, as it
// was before it learned the demand), plain ascending order and the
// exhaustive optimum, on the same sequences.
//
//	go test -run '^$' -bench Packing -benchtime 1x ./research/scheduling/
func BenchmarkPacking(b *testing.B) {
	const sequences = 1000
	gpus := h200Node(b, 8)
	opt := NewOptimum(gpus[0])
	for b.Loop() {
		var sum PackingResult
		demand := WarmDemand(rand.New(rand.NewPCG(2027, 1)), gpus[0].MIG.Profiles, nil, warmDemand)
		for seq := range sequences {
			r := PackingWeighted(rand.New(rand.NewPCG(uint64(seq), 2026)), gpus, opt, demand)
			sum.Add(r)
		}
		b.ReportMetric(100*sum.Tessera/float64(sequences), "%used-tessera")
		b.ReportMetric(100*sum.Ascending/float64(sequences), "%used-ascending")
		b.ReportMetric(100*sum.Best/float64(sequences), "%used-best")
		b.ReportMetric(100*sum.Tessera/sum.Best, "%of-best-tessera")
		b.ReportMetric(100*sum.Ascending/sum.Best, "%of-best-ascending")
		b.ReportMetric(100*sum.BestFit/float64(sequences), "%used-bestfit")
		b.ReportMetric(100*sum.BestFit/sum.Best, "%of-best-bestfit")
		b.ReportMetric(100*sum.Weighted/float64(sequences), "%used-weighted")
		b.ReportMetric(100*sum.Weighted/sum.Best, "%of-best-weighted")
	}
}

// warmDemand is how many requests the benchmarks' demand has seen before
// the first sequence: a cluster's scheduler has placed many nodes' worth
// (a sequence is about 30), and three half-lives of the estimate
// (scheduler's demandHalfLife) leave little of where it started.
const warmDemand = 3000
