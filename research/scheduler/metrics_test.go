package scheduler

import (
	"strconv"
	"strings"
	"testing"

	"k8s.io/component-base/metrics/testutil"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
)

// TestDemandCollector: the scrape shows what the placement choice weighs by
// now. Before any request every class weighs 1 at version 0 and no class is
// listed; after 30 requests for 1g.18gb and 10 for 3g.71gb (counts of about
// 29.6 and 9.9 once decayed) 1g.18gb weighs 1, 3g.71gb
// ((9.9+1)/(29.6+1))^0.75 = 0.46, rounded to 7/16, and every other class
// (1/30.6)^0.75 = 0.07, rounded to 1/16.
func TestDemandCollector(t *testing.T) {
	names := []string{"tessera_scheduler_demand_weight", "tessera_scheduler_demand_unasked_weight", "tessera_scheduler_demand_share", "tessera_scheduler_demand_weights_version"}
	d := NewDemand()
	// Each compare registers the collector anew, so each gets its own.
	if err := testutil.CustomCollectAndCompare(NewDemandCollector(d), strings.NewReader(`
# HELP tessera_scheduler_demand_unasked_weight [ALPHA] Weight of every class not asked for in the demand's memory (1 before anything was asked for).
# TYPE tessera_scheduler_demand_unasked_weight gauge
tessera_scheduler_demand_unasked_weight 1
# HELP tessera_scheduler_demand_weights_version [ALPHA] Version of the published demand weights: 0 until the first request moves them, then one more for each change larger than a weight's grain (1/16).
# TYPE tessera_scheduler_demand_weights_version gauge
tessera_scheduler_demand_weights_version 0
`), names...); err != nil {
		t.Fatal(err)
	}
	for range 10 {
		d.Observe("3g.71gb", 1)
	}
	d.Observe("1g.18gb", 30)
	version := d.Weights().Version
	if version == 0 {
		t.Fatal("40 requests published no weights")
	}
	// The shares as published: 1g.18gb's count over both, the decayed
	// counts' own sum.
	share := func(class string) string { return strconv.FormatFloat(d.Weights().Share(class), 'g', -1, 64) }
	if s := d.Weights().Share("1g.18gb"); s < 0.74 || s > 0.76 {
		t.Fatalf("1g.18gb's share %v, want about 29.6/39.5", s)
	}
	if err := testutil.CustomCollectAndCompare(NewDemandCollector(d), strings.NewReader(`
# HELP tessera_scheduler_demand_weight [ALPHA] Weight the MIG placement choice gives to blocking a free device of the class (a MIG profile, gpu or shared), from the demand the scheduler has seen: 1 for the class most asked for, towards 0 for one rarely asked for.
# TYPE tessera_scheduler_demand_weight gauge
tessera_scheduler_demand_weight{class="1g.18gb"} 1
tessera_scheduler_demand_weight{class="3g.71gb"} 0.4375
# HELP tessera_scheduler_demand_unasked_weight [ALPHA] Weight of every class not asked for in the demand's memory (1 before anything was asked for).
# TYPE tessera_scheduler_demand_unasked_weight gauge
tessera_scheduler_demand_unasked_weight 0.0625
# HELP tessera_scheduler_demand_share [ALPHA] Share of the devices asked for that are of the class (a MIG profile, gpu or shared), decayed, as the weights were published: the final MIG placement choice draws the futures it plays from these shares.
# TYPE tessera_scheduler_demand_share gauge
tessera_scheduler_demand_share{class="1g.18gb"} `+share("1g.18gb")+`
tessera_scheduler_demand_share{class="3g.71gb"} `+share("3g.71gb")+`
# HELP tessera_scheduler_demand_weights_version [ALPHA] Version of the published demand weights: 0 until the first request moves them, then one more for each change larger than a weight's grain (1/16).
# TYPE tessera_scheduler_demand_weights_version gauge
tessera_scheduler_demand_weights_version `+strconv.FormatUint(version, 10)+`
`), names...); err != nil {
		t.Fatal(err)
	}
}

// TestFinalChoiceCollector: the scrape shows the final choice's counts; the
// first choice on an empty node of two GPUs, demand for 7g partitions only,
// a 1g partition, is counted made; no choice is counted moved unless its
// first differs from the weighted ranking's.
func TestFinalChoiceCollector(t *testing.T) {
	d := NewDemand()
	for range 100 {
		d.Observe("7g.40gb", 1)
	}
	f := NewFinalChoice(d)
	v := viewOf(t, migNode("n", 2), "n", emptyAllocated(), "1g.5gb")
	got := f.Order(gpuapi.DriverName, v.devices, v.left, v.selectable)
	moved := "0"
	if first := MIGPlacementOrderFor(d)(gpuapi.DriverName, v.devices, v.left, v.selectable); first[0] != got[0] {
		moved = "1"
	}
	if err := testutil.CustomCollectAndCompare(f.Collector(), strings.NewReader(`
# HELP tessera_scheduler_final_choices_moved_total [ALPHA] Final MIG placement choices that took another partition than the one the demand-weighted ranking Filter uses puts first.
# TYPE tessera_scheduler_final_choices_moved_total counter
tessera_scheduler_final_choices_moved_total `+moved+`
# HELP tessera_scheduler_final_choices_total [ALPHA] MIG placement choices made on the chosen node in Reserve by playing futures drawn from the demand (one per request of one partition).
# TYPE tessera_scheduler_final_choices_total counter
tessera_scheduler_final_choices_total 1
`)); err != nil {
		t.Fatal(err)
	}
}
