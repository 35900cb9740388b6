package scheduling

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"testing"

	"github.com/tessera-gpu/tessera/pkg/inventory"
)

// benchInventory is an 8 x H200 node as the mock reports it, with the PCI
// addresses real hardware has (the mock leaves them empty), so that every
// layout carries the attributes it carries on a real node.
func benchInventory(t testing.TB) inventory.Node {
	h, _ := newHardwareTB(t, "dgxh200", 8)
	inv := h.node
	inv.DriverVersion, inv.CUDADriverVersion = "550.54.15", "12.4"
	for i := range inv.GPUs {
		inv.GPUs[i].PCIBusID = fmt.Sprintf("0000:%02x:00.0", 0x18+0x10*i)
		inv.GPUs[i].PCIeRoot = fmt.Sprintf("pci0000:%02x", 0x10+0x10*i)
	}
	return inv
}

// BenchmarkSchedulerCost is the scheduler's allocator cost of one claim,
// filtered against every node as kube-scheduler's filter does, for each claim
// kind, on Tessera's layout, the same GPUs as plain whole devices and NVIDIA's
// layout, and Tessera's with blocked devices withdrawn, at 0, 50 and 90 % of
// each node's GPUs in use (Fill), on 1, 100 and 500 nodes. It reports the cost per node (ns/node, allocs/node) and on how
// many nodes the claim fits.
//
//	go test -run '^$' -bench SchedulerCost -benchtime 2x ./research/scheduling/
func BenchmarkSchedulerCost(b *testing.B) {
	inv := benchInventory(b)
	for _, fill := range []int{0, 50, 90} {
		// Withdrawal (resourceslice.Options.WithdrawBlocked, what the
		// plugin publishes by default) is measured beside the three
		// layouts at every fill.
		layouts := append(slices.Clone(Layouts), withdrawn(Tessera, inv, Fill(fill)))
		for _, nodes := range []int{1, 100, 500} {
			for _, kind := range ClaimKinds {
				for _, l := range layouts {
					benchmarkClaim(b, fmt.Sprintf("fill=%d/nodes=%d/claim=%s/layout=%s", fill, nodes, kind, l.Name), l, inv, fill, nodes, kind)
				}
			}
		}
	}
}

func benchmarkClaim(b *testing.B, name string, l Layout, inv inventory.Node, fill, nodes int, kind ClaimKind) {
	claim := l.Claim(kind)
	if claim == nil {
		return
	}
	b.Run(name, func(b *testing.B) {
		ctx := context.Background()
		c := NewLayoutCluster(l, inv, nodes)
		c.Occupy(l, inv, Fill(fill))
		// Filter once outside the measurement, as the pods before this one
		// did in a running scheduler: its CEL cache holds the expressions,
		// and tessera-scheduler's node cache (research/patches/allocator) each node's
		// converted slices. BenchmarkSchedulerCostNewSlices measures nodes
		// whose slices just changed.
		if _, err := c.filter(ctx, claim, c.Nodes); err != nil {
			b.Fatal(err)
		}
		fit := 0
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for b.Loop() {
			var err error
			if fit, err = c.Filter(ctx, claim); err != nil {
				b.Fatal(err)
			}
		}
		runtime.ReadMemStats(&after)
		perNode := float64(b.N) * float64(nodes)
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/perNode, "ns/node")
		b.ReportMetric(float64(after.Mallocs-before.Mallocs)/perNode, "allocs/node")
		b.ReportMetric(float64(fit), "fits")
	})
}

// BenchmarkSchedulerCostNewSlices is BenchmarkSchedulerCost at 90 % fill on
// 500 nodes, for what the default install publishes (withdrawn) and plain
// devices, where every node's slices have just changed: before each filter
// every slice is replaced by a new object with the same content, as an
// update from the API server is. The stock allocator keeps nothing from one
// pod to the next, so this costs it what BenchmarkSchedulerCost does;
// tessera-scheduler's node cache must convert every node again.
//
//	go test -run '^$' -bench SchedulerCostNewSlices -benchtime 2x ./research/scheduling/
func BenchmarkSchedulerCostNewSlices(b *testing.B) {
	inv := benchInventory(b)
	const fill, nodes = 90, 500
	for _, kind := range ClaimKinds {
		for _, l := range []Layout{withdrawn(Tessera, inv, Fill(fill)), Plain} {
			claim := l.Claim(kind)
			if claim == nil {
				continue
			}
			b.Run(fmt.Sprintf("fill=%d/nodes=%d/claim=%s/layout=%s", fill, nodes, kind, l.Name), func(b *testing.B) {
				ctx := context.Background()
				c := NewLayoutCluster(l, inv, nodes)
				c.Occupy(l, inv, Fill(fill))
				if _, err := c.filter(ctx, claim, c.Nodes); err != nil {
					b.Fatal(err)
				}
				var mallocs uint64
				for i := 0; i < b.N; i++ {
					b.StopTimer()
					for j, s := range c.Slices {
						c.Slices[j] = s.DeepCopy()
					}
					var before, after runtime.MemStats
					runtime.ReadMemStats(&before)
					b.StartTimer()
					if _, err := c.Filter(ctx, claim); err != nil {
						b.Fatal(err)
					}
					b.StopTimer()
					runtime.ReadMemStats(&after)
					mallocs += after.Mallocs - before.Mallocs
					b.StartTimer()
				}
				perNode := float64(b.N) * nodes
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/perNode, "ns/node")
				b.ReportMetric(float64(mallocs)/perNode, "allocs/node")
			})
		}
	}
}
