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
// there, with the same weights. The weights are on the scheduler's /metrics
// (tessera_scheduler_demand_*, docs/observability.md).
func init() {
	demand := scheduler.NewDemand()
	draapi.SetDeviceOrder(scheduler.MIGPlacementOrderFor(demand))
	legacyregistry.CustomMustRegister(scheduler.NewDemandCollector(demand))
	pluginOptions = append(pluginOptions, scheduler.WithPlacementChoice(), scheduler.WithDemand(demand))
}
