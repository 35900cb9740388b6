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

// Not upstream's: research/patches/scheduler/overlay.sh adds it beside count-once.patch
// (see research/patches/scheduler/README.md).

package dynamicresources

import (
	"testing"

	"github.com/stretchr/testify/require"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	featuregatetesting "k8s.io/component-base/featuregate/testing"
	"k8s.io/dynamic-resource-allocation/structured"
	"k8s.io/klog/v2/ktesting"
	"k8s.io/kubernetes/pkg/features"
)

func shareClaim(uid, shareID string, memory string) *resourceapi.ResourceClaim {
	id := types.UID(shareID)
	return &resourceapi.ResourceClaim{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: uid, UID: types.UID(uid)},
		Status: resourceapi.ResourceClaimStatus{Allocation: &resourceapi.AllocationResult{
			Devices: resourceapi.DeviceAllocationResult{Results: []resourceapi.DeviceRequestAllocationResult{{
				Request: "share", Driver: "gpu.example.com", Pool: "node", Device: "gpu-0-shared", ShareID: &id,
				ConsumedCapacity: map[resourceapi.QualifiedName]resource.Quantity{"memory": resource.MustParse(memory)},
			}}},
		}},
	}
}

// TestGatherAllocatedStateCountsAShareOnce: a share whose allocation the cache
// already shows (PreBind wrote it) while it is still in flight (its binding
// cycle has not ended) consumes its capacity once, not twice; a share only in
// flight, or only in the cache, once too. Upstream counts the first twice, so a
// burst of shares finds a GPU fuller than it is and spreads to free GPUs.
func TestGatherAllocatedStateCountsAShareOnce(t *testing.T) {
	featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.DRAConsumableCapacity, true)
	logger := ktesting.NewLogger(t, ktesting.NewConfig())
	tracker := &claimTracker{
		inFlightAllocations: map[types.UID]inFlightAllocation{},
		allocatedDevices:    newAllocatedDevices(logger),
		logger:              logger,
	}
	both, cacheOnly, flightOnly := shareClaim("both", "s1", "30Gi"), shareClaim("cache", "s2", "20Gi"), shareClaim("flight", "s3", "10Gi")
	tracker.allocatedDevices.addDevices(both)
	tracker.allocatedDevices.addDevices(cacheOnly)
	tracker.inFlightAllocations[both.UID] = inFlightAllocation{claim: both, sharers: 1}
	tracker.inFlightAllocations[flightOnly.UID] = inFlightAllocation{claim: flightOnly, sharers: 1}

	state, err := tracker.GatherAllocatedState()
	require.NoError(t, err)
	got := state.AggregatedCapacity[structured.MakeDeviceID("gpu.example.com", "node", "gpu-0-shared")]["memory"]
	require.NotNil(t, got)
	require.Equal(t, "60Gi", got.String(), "30Gi (in the cache and in flight) + 20Gi (cache) + 10Gi (in flight)")

	// A claim in flight with another allocation than the cache shows (the
	// cache is behind a deallocation and reallocation) is counted in full.
	tracker.inFlightAllocations[both.UID] = inFlightAllocation{claim: shareClaim("both", "s4", "30Gi"), sharers: 1}
	state, err = tracker.GatherAllocatedState()
	require.NoError(t, err)
	got = state.AggregatedCapacity[structured.MakeDeviceID("gpu.example.com", "node", "gpu-0-shared")]["memory"]
	require.Equal(t, "90Gi", got.String())

	// Once the cache drops the claim, its in-flight allocation counts again.
	tracker.inFlightAllocations[both.UID] = inFlightAllocation{claim: both, sharers: 1}
	tracker.allocatedDevices.removeDevices(both)
	state, err = tracker.GatherAllocatedState()
	require.NoError(t, err)
	got = state.AggregatedCapacity[structured.MakeDeviceID("gpu.example.com", "node", "gpu-0-shared")]["memory"]
	require.Equal(t, "60Gi", got.String())
}
