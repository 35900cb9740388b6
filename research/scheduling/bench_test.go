package scheduling

import (
	"math/rand/v2"
	"testing"
)

// BenchmarkPacking draws seeded random sequences of MIG requests on one
// 8 x H200 node until the first request that cannot be placed and reports
// the mean share of memory slices in use at that point for Tessera's device
// order, plain ascending order and the exhaustive optimum.
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
			sum.Best += r.Best
		}
		b.ReportMetric(100*sum.Tessera/sequences, "%used-tessera")
		b.ReportMetric(100*sum.Ascending/sequences, "%used-ascending")
		b.ReportMetric(100*sum.Best/sequences, "%used-best")
		b.ReportMetric(100*sum.Tessera/sum.Best, "%of-best-tessera")
		b.ReportMetric(100*sum.Ascending/sum.Best, "%of-best-ascending")
	}
}
