package scheduling

import (
	"math/rand/v2"
	"testing"
)

// BenchmarkPacking draws seeded random sequences of MIG requests on one
// 8 x H200 node until the first request that cannot be placed and reports
// the mean share of memory slices in use at that point for Tessera's device
// order (the stock allocator's first fit, kube-scheduler), tessera-scheduler's
// choice among the free placements (partition.BestFit), plain ascending order
// and the exhaustive optimum, on the same sequences.
//
//	go test -run '^$' -bench Packing -benchtime 1x ./research/scheduling/
func BenchmarkPacking(b *testing.B) {
	const sequences = 1000
	gpus := h200Node(b, 8)
	opt := NewOptimum(gpus[0])
	for b.Loop() {
		var sum PackingResult
		for seq := range sequences {
			r := Packing(rand.New(rand.NewPCG(uint64(seq), 2026)), gpus, opt)
			sum.Tessera += r.Tessera
			sum.Ascending += r.Ascending
			sum.BestFit += r.BestFit
			sum.Best += r.Best
		}
		b.ReportMetric(100*sum.Tessera/float64(sequences), "%used-tessera")
		b.ReportMetric(100*sum.Ascending/float64(sequences), "%used-ascending")
		b.ReportMetric(100*sum.Best/float64(sequences), "%used-best")
		b.ReportMetric(100*sum.Tessera/sum.Best, "%of-best-tessera")
		b.ReportMetric(100*sum.Ascending/sum.Best, "%of-best-ascending")
		b.ReportMetric(100*sum.BestFit/float64(sequences), "%used-bestfit")
		b.ReportMetric(100*sum.BestFit/sum.Best, "%of-best-bestfit")
	}
}
