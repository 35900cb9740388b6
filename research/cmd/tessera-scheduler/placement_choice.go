//go:build patched_allocator

package main

import (
	draapi "k8s.io/dynamic-resource-allocation/api"

	"github.com/tessera-gpu/tessera/research/scheduler"
)

// The allocator that tessera-scheduler is built on (hack/allocator/overlay.sh)
// asks a registered device order which of a node's free devices a request of
// one device takes first; tessera-scheduler's is the MIG placement choice.
// Only that patched allocator has draapi.SetDeviceOrder, hence the build tag,
// which the tessera-scheduler target sets. TesseraPlacement then scores a
// node by the partition the choice takes there.
func init() {
	draapi.SetDeviceOrder(scheduler.MIGPlacementOrder)
	pluginOptions = append(pluginOptions, scheduler.WithPlacementChoice())
}
