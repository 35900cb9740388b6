// Command tessera-sim replays GPU workloads against a fleet with
// kube-scheduler's DRA allocator on the slices Tessera publishes, to measure
// how much GPU capacity each placement policy leaves unallocated, in time,
// what hard and elastic tenant budgets leave unallocated, and how bursts of
// shares pack under kube-scheduler's and tessera-scheduler's accounting.
//
//	tessera-sim trace --pods PODS.csv --nodes NODES.csv --policy whole,stock,tessera --seeds 10
//	tessera-sim whatif --pods PODS.csv --nodes NODES.csv
//	tessera-sim timeline --pods PODS.csv --nodes NODES.csv --tenants 4 --budgets hard,elastic
//	tessera-sim burst --seeds 10
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/tessera-gpu/tessera/research/sim"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := sim.NewCommand().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "tessera-sim:", err)
		os.Exit(1)
	}
}
