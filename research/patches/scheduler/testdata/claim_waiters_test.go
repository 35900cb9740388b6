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

// Not upstream's: research/patches/scheduler/overlay.sh adds it beside claim-watch.patch's
// claimwaiters.go (see research/patches/scheduler/README.md).

package dynamicresources

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/kubernetes/pkg/scheduler/apis/config"
	"k8s.io/kubernetes/pkg/scheduler/framework/plugins/feature"
	"k8s.io/kubernetes/test/utils/ktesting"
)

// waitingClaimTest makes the plugin with one claim allocated with binding
// conditions and returns it with the state PreBind would wait on.
func waitingClaimTest(tCtx ktesting.TContext, bindingTimeout time.Duration) (*testContext, *stateData) {
	claim := allocatedClaim.DeepCopy()
	claim.Status.Allocation = allocationResultWithBindingConditions.DeepCopy()
	claim.Status.Allocation.AllocationTimestamp = &metav1.Time{Time: time.Now()}
	args := getDefaultDynamicResourcesArgs()
	args.BindingTimeout = &metav1.Duration{Duration: bindingTimeout}
	tc := setup(tCtx, args, nil, []*resourceapi.ResourceClaim{claim}, nil, nil, nil, feature.Features{
		EnableDynamicResourceAllocation:    true,
		EnableDRADeviceBindingConditions:   true,
		EnableDRAResourceClaimDeviceStatus: true,
		EnableDRASchedulerFilterTimeout:    true,
	}, false, nil)
	stored, err := tc.draManager.ResourceClaims().Get(namespace, claimName)
	require.NoError(tCtx, err)
	return tc, &stateData{claims: newClaimStore([]*resourceapi.ResourceClaim{stored}, nil, nil)}
}

// setCondition writes the claim's device status with the condition true, once
// waitForBinding has registered for the claim (when the patch's New set that
// up) and had its first look.
func setCondition(tCtx ktesting.TContext, tc *testContext, condition string) {
	for i := 0; tc.p.claimWaiters != nil; i++ {
		tc.p.claimWaiters.mu.Lock()
		n := len(tc.p.claimWaiters.waiters[namespace+"/"+claimName])
		tc.p.claimWaiters.mu.Unlock()
		if n > 0 {
			break
		}
		if i == 1000 {
			tCtx.Error("waitForBinding never registered for the claim")
			return
		}
		time.Sleep(time.Millisecond)
	}
	// Past the first look (it follows the registration at once).
	time.Sleep(100 * time.Millisecond)
	claim, err := tc.client.ResourceV1().ResourceClaims(namespace).Get(tCtx, claimName, metav1.GetOptions{})
	if err != nil {
		tCtx.Error(err)
		return
	}
	claim.Status.Devices = []resourceapi.AllocatedDeviceStatus{{
		Driver: driver, Pool: nodeName, Device: "instance-1",
		Conditions: []metav1.Condition{{Type: condition, Status: metav1.ConditionTrue, Reason: "Test", LastTransitionTime: metav1.Now()}},
	}}
	if _, err := tc.client.ResourceV1().ResourceClaims(namespace).UpdateStatus(tCtx, claim, metav1.UpdateOptions{}); err != nil {
		tCtx.Error(err)
	}
}

// TestWaitForBindingWakesOnClaimChange: a claim whose binding condition turns
// true after PreBind's first look is bound on that change, not at the next
// 5 s poll: the wait is given 3 s, which upstream's poll never meets.
func TestWaitForBindingWakesOnClaimChange(t *testing.T) {
	tCtx := ktesting.Init(t)
	tc, state := waitingClaimTest(tCtx, config.DynamicResourcesBindingTimeoutDefault)
	go setCondition(tCtx, tc, bindingConditions[0])
	ctx, cancel := context.WithTimeout(tCtx, 3*time.Second)
	defer cancel()
	require.NoError(t, tc.p.waitForBinding(ctx, state))
}

// TestWaitForBindingFailsOnFailureCondition: a binding failure condition set
// while PreBind waits ends the wait with ErrDeviceBindingFailed, as upstream's
// poll does, on the change.
func TestWaitForBindingFailsOnFailureCondition(t *testing.T) {
	tCtx := ktesting.Init(t)
	tc, state := waitingClaimTest(tCtx, config.DynamicResourcesBindingTimeoutDefault)
	go setCondition(tCtx, tc, bindingFailureConditions[0])
	ctx, cancel := context.WithTimeout(tCtx, 3*time.Second)
	defer cancel()
	err := tc.p.waitForBinding(ctx, state)
	require.ErrorIs(t, err, ErrDeviceBindingFailed)
}

// TestWaitForBindingTimesOut: with no change, the wait ends after the
// plugin's binding timeout with context.DeadlineExceeded, which PreBind
// reports as ErrDeviceBindingTimeout, as upstream's poll does.
func TestWaitForBindingTimesOut(t *testing.T) {
	tCtx := ktesting.Init(t)
	tc, state := waitingClaimTest(tCtx, time.Second)
	start := time.Now()
	err := tc.p.waitForBinding(tCtx, state)
	require.True(t, errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrDeviceBindingTimeout), "got %v", err)
	require.GreaterOrEqual(t, time.Since(start), time.Second)
	tc.p.claimWaiters.mu.Lock()
	defer tc.p.claimWaiters.mu.Unlock()
	require.Empty(t, tc.p.claimWaiters.waiters, "a finished wait stays registered")
}
