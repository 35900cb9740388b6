package scheduling

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"

	resourceapi "k8s.io/api/resource/v1"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/pkg/inventory"
	"github.com/tessera-gpu/tessera/pkg/resourceslice"
	"github.com/tessera-gpu/tessera/test/builder"
)

// plainSlices publishes the same GPUs as plain whole devices: no MIG, no
// sharing, no counters, the layout of a driver without partitions.
func plainSlices(nodeName string, gpus []inventory.GPU) *resourceapi.ResourceSlice {
	slice := builder.MakeSlice(nodeName+"-plain", nodeName)
	for _, g := range gpus {
		slice.Device(builder.MakeDevice(fmt.Sprintf("gpu-%d", g.Index)).
			Attr(gpuapi.AttrType, gpuapi.TypeGPU).
			Attr(gpuapi.AttrUUID, g.UUID).
			Obj())
	}
	return slice.Obj()
}

func cluster(b *testing.B, layout string, nodes int) *Cluster {
	gpus := h200Node(b, 8)
	var names []string
	var slices []*resourceapi.ResourceSlice
	for i := range nodes {
		name := fmt.Sprintf("node-%03d", i)
		names = append(names, name)
		if layout == "plain" {
			slices = append(slices, plainSlices(name, gpus))
			continue
		}
		slices = append(slices, resourceslice.Objects(name, resourceslice.Build(name, inventory.Node{
			DriverVersion: "550.54.15", CUDADriverVersion: "12.4", GPUs: gpus,
		}, resourceslice.Options{Pool: "default"}))...)
	}
	return NewCluster(names, slices)
}

// BenchmarkAllocatorPerClaim measures the scheduler's allocator for one
// claim, filtered against every node as kube-scheduler does: a whole GPU with
// Tessera's layout and with the same GPUs published as plain whole devices,
// and a MIG partition and a share with Tessera's layout. Half of every node's
// GPUs are already allocated.
//
//	go test -run '^$' -bench AllocatorPerClaim ./test/scheduling/
func BenchmarkAllocatorPerClaim(b *testing.B) {
	ctx := context.Background()
	claims := []struct {
		name    string
		layouts []string
		claim   func() *resourceapi.ResourceClaim
	}{
		{"whole", []string{"tessera", "plain"}, WholeGPU},
		{"mig-1g", []string{"tessera"}, func() *resourceapi.ResourceClaim { return MIG("1g.18gb", 1) }},
		{"share", []string{"tessera"}, func() *resourceapi.ResourceClaim { return Share("20Gi", 30) }},
	}
	for _, nodes := range []int{1, 100} {
		for _, kind := range claims {
			for _, layout := range kind.layouts {
				b.Run(fmt.Sprintf("nodes=%d/claim=%s/layout=%s", nodes, kind.name, layout), func(b *testing.B) {
					c := cluster(b, layout, nodes)
					// Fill half of each node: 4 whole GPUs per node.
					for node := range nodes {
						for range 4 {
							if r, err := c.AllocateOn(ctx, node, WholeGPU()); err != nil || r == nil {
								b.Fatalf("prefill: %v %v", r, err)
							}
						}
					}
					claim := kind.claim()
					for b.Loop() {
						fit, err := c.Filter(ctx, claim)
						if err != nil || fit != nodes {
							b.Fatalf("claim fits %d of %d nodes: %v", fit, nodes, err)
						}
					}
				})
			}
		}
	}
}

// BenchmarkPacking draws seeded random sequences of MIG requests on one
// 8 x H200 node until the first request that cannot be placed and reports
// the mean share of memory slices in use at that point for Tessera's device
// order, plain ascending order and the exhaustive optimum.
//
//	go test -run '^$' -bench Packing -benchtime 1x ./test/scheduling/
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
