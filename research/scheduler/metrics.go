package scheduler

import (
	"k8s.io/component-base/metrics"
)

// The demand's metrics: what the placement choice weighs each class by now,
// and the shares its final choice draws futures from, read from the
// published weights at each scrape. A class is a MIG profile
// (a name the user writes in a claim's selector), "gpu" or "shared"; Demand
// keeps at most maxDemandClasses of them, which bounds the label's values.
var (
	demandWeightDesc = metrics.NewDesc("tessera_scheduler_demand_weight",
		"Weight the MIG placement choice gives to blocking a free device of the class (a MIG profile, gpu or shared), from the demand the scheduler has seen: 1 for the class most asked for, towards 0 for one rarely asked for.",
		[]string{"class"}, nil, metrics.ALPHA, "")
	demandUnaskedWeightDesc = metrics.NewDesc("tessera_scheduler_demand_unasked_weight",
		"Weight of every class not asked for in the demand's memory (1 before anything was asked for).",
		nil, nil, metrics.ALPHA, "")
	demandShareDesc = metrics.NewDesc("tessera_scheduler_demand_share",
		"Share of the devices asked for that are of the class (a MIG profile, gpu or shared), decayed, as the weights were published: the final MIG placement choice draws the futures it plays from these shares.",
		[]string{"class"}, nil, metrics.ALPHA, "")
	demandVersionDesc = metrics.NewDesc("tessera_scheduler_demand_weights_version",
		"Version of the published demand weights: 0 until the first request moves them, then one more for each change larger than a weight's grain (1/16).",
		nil, nil, metrics.ALPHA, "")
)

// demandCollector exposes a Demand's published weights.
type demandCollector struct {
	metrics.BaseStableCollector
	demand *Demand
}

// NewDemandCollector returns a collector of d's published weights, for the
// scheduler's metrics registry (legacyregistry.CustomMustRegister).
func NewDemandCollector(d *Demand) metrics.StableCollector {
	return &demandCollector{demand: d}
}

// DescribeWithStability implements metrics.StableCollector.
func (c *demandCollector) DescribeWithStability(ch chan<- *metrics.Desc) {
	ch <- demandWeightDesc
	ch <- demandUnaskedWeightDesc
	ch <- demandShareDesc
	ch <- demandVersionDesc
}

// CollectWithStability implements metrics.StableCollector.
func (c *demandCollector) CollectWithStability(ch chan<- metrics.Metric) {
	w := c.demand.Weights()
	ch <- metrics.NewLazyConstMetric(demandVersionDesc, metrics.GaugeValue, float64(w.Version))
	ch <- metrics.NewLazyConstMetric(demandUnaskedWeightDesc, metrics.GaugeValue, w.other)
	for class, v := range w.byClass {
		ch <- metrics.NewLazyConstMetric(demandWeightDesc, metrics.GaugeValue, v, class)
	}
	for class, v := range w.share {
		ch <- metrics.NewLazyConstMetric(demandShareDesc, metrics.GaugeValue, v, class)
	}
}

// The final choice's metrics: how many choices it made, and how many moved the
// partition from the one the weighted ranking (Filter's) puts first.
var (
	finalChoicesDesc = metrics.NewDesc("tessera_scheduler_final_choices_total",
		"MIG placement choices made on the chosen node in Reserve by playing futures drawn from the demand (one per request of one partition).",
		nil, nil, metrics.ALPHA, "")
	finalMovedDesc = metrics.NewDesc("tessera_scheduler_final_choices_moved_total",
		"Final MIG placement choices that took another partition than the one the demand-weighted ranking Filter uses puts first.",
		nil, nil, metrics.ALPHA, "")
)

// finalChoiceCollector exposes a FinalChoice's counts.
type finalChoiceCollector struct {
	metrics.BaseStableCollector
	final *FinalChoice
}

// Collector returns a collector of f's counts, for the scheduler's metrics
// registry (legacyregistry.CustomMustRegister).
func (f *FinalChoice) Collector() metrics.StableCollector {
	return &finalChoiceCollector{final: f}
}

// DescribeWithStability implements metrics.StableCollector.
func (c *finalChoiceCollector) DescribeWithStability(ch chan<- *metrics.Desc) {
	ch <- finalChoicesDesc
	ch <- finalMovedDesc
}

// CollectWithStability implements metrics.StableCollector.
func (c *finalChoiceCollector) CollectWithStability(ch chan<- metrics.Metric) {
	made, moved := c.final.Made()
	ch <- metrics.NewLazyConstMetric(finalChoicesDesc, metrics.CounterValue, float64(made))
	ch <- metrics.NewLazyConstMetric(finalMovedDesc, metrics.CounterValue, float64(moved))
}
