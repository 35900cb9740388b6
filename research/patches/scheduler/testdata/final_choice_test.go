/*
Copyright The Kubernetes Authors.

Licensed under the Apache License, Version 2.0 (the "License");
you may not use this file except in compliance with the License.
You may obtain a copy of the License at

    http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software
distributed under the License is distributed on an "AS IS" BASIS,
WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
See the License for the specific language governing permissions and
limitations under the License.
*/

// Not upstream's: research/patches/scheduler/overlay.sh adds it beside final-choice.patch's
// finalchoice.go (see research/patches/scheduler/README.md).

package dynamicresources

import (
	"testing"

	"github.com/stretchr/testify/require"
	v1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	apiruntime "k8s.io/apimachinery/pkg/runtime"
	draapi "k8s.io/dynamic-resource-allocation/api"
	"k8s.io/kubernetes/pkg/scheduler/framework/plugins/feature"
	st "k8s.io/kubernetes/pkg/scheduler/testing"
	"k8s.io/kubernetes/test/utils/ktesting"
)

// lastSelectable is a device order that puts the pool's last free device
// that the request selects first.
func lastSelectable(_ string, devices []*draapi.Device, _ map[string]map[string]int64, selectable func(int) bool) []int {
	for i := len(devices) - 1; i >= 0; i-- {
		if selectable(i) {
			return []int{i}
		}
	}
	return nil
}

// reservedDevice runs PreFilter, Filter and Reserve for the pod with one
// pending claim of one device on a node with three, and returns the device
// Filter allocated and the one Reserve kept for the claim.
func reservedDevice(t *testing.T) (filtered, reserved string) {
	tCtx := ktesting.Init(t)
	slice := st.MakeResourceSlice(nodeName, driver).Devices("instance-1", "instance-2", "instance-3").Obj()
	tc := setup(tCtx, nil, []*v1.Node{workerNode}, []*resourceapi.ResourceClaim{pendingClaim}, []*resourceapi.DeviceClass{deviceClass}, nil, []apiruntime.Object{slice},
		feature.Features{EnableDynamicResourceAllocation: true, EnableDRASchedulerFilterTimeout: true, EnableDRADeviceBindingConditions: true, EnableDRAResourceClaimDeviceStatus: true}, false, nil)
	_, status := tc.p.PreFilter(tCtx, tc.state, podWithClaimName, tc.nodeInfos)
	require.True(t, status.IsSuccess(), "PreFilter: %v", status)
	status = tc.p.Filter(tCtx, tc.state, podWithClaimName, tc.nodeInfos[0])
	require.True(t, status.IsSuccess(), "Filter: %v", status)
	state, err := getStateData(tc.state)
	require.NoError(t, err)
	filtered = state.nodeAllocations[nodeName].allocationResults[0].Devices.Results[0].Device
	status = tc.p.Reserve(tCtx, tc.state, podWithClaimName, nodeName)
	require.True(t, status.IsSuccess(), "Reserve: %v", status)
	return filtered, state.informationsForClaim[0].allocation.Devices.Results[0].Device
}

// TestReserveTakesTheFinalChoice: with a final device order registered,
// Reserve allocates once more on the chosen node and keeps the device the
// final order puts first, where Filter took the first in published order
// (the cheap order is not registered); without one, Filter's allocation
// stands. It fails on the unpatched plugin, whose Reserve keeps Filter's.
func TestReserveTakesTheFinalChoice(t *testing.T) {
	t.Run("final order", func(t *testing.T) {
		draapi.SetFinalDeviceOrder(lastSelectable)
		defer draapi.SetFinalDeviceOrder(nil)
		filtered, reserved := reservedDevice(t)
		require.Equal(t, "instance-1", filtered)
		require.Equal(t, "instance-3", reserved)
	})
	t.Run("none", func(t *testing.T) {
		filtered, reserved := reservedDevice(t)
		require.Equal(t, "instance-1", filtered)
		require.Equal(t, "instance-1", reserved)
	})
}
