//go:build patched_allocator

package main

import (
	"k8s.io/component-base/metrics/legacyregistry"
	draapi "k8s.io/dynamic-resource-allocation/api"

	"github.com/tessera-gpu/tessera/research/scheduler"
)

// The allocator that tessera-scheduler is built on (hack/allocator/overlay.sh)
// asks a registered device order which of a node's free devices a request of
// one device takes first; tessera-scheduler's is the MIG placement choice,
// which weighs what a placement blocks by the demand the scheduler has seen.
// Only that patched allocator has draapi.SetDeviceOrder, hence the build tag,
// which the tessera-scheduler target sets. TesseraPlacement tells the demand
// what each pod asks for and scores a node by the partition the choice takes
// there, with the same weights. On the node it chose, its DynamicResources
// plugin allocates once more in Reserve (research/patches/scheduler/
// final-choice.patch) with the final order, which plays futures drawn from the
// demand's shares from what each free placement leaves: too costly for every
// node, once per pod it costs about a millisecond. The weights, and how often
// the final choice moved a partition, are on the scheduler's /metrics
// (tessera_scheduler_demand_*, tessera_scheduler_final_choices_*,
// docs/observability.md).
func init() {
	demand := scheduler.NewDemand()
	draapi.SetDeviceOrder(scheduler.MIGPlacementOrderFor(demand))
	final := scheduler.NewFinalChoice(demand)
	draapi.SetFinalDeviceOrder(final.Order)
	legacyregistry.CustomMustRegister(scheduler.NewDemandCollector(demand), final.Collector())
	pluginOptions = append(pluginOptions, scheduler.WithPlacementChoice(), scheduler.WithDemand(demand))
}
