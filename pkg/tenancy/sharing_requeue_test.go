package tenancy

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
)

func TestWaitedShares(t *testing.T) {
	result := func(driver, device string, share, gated bool) resourceapi.DeviceRequestAllocationResult {
		r := resourceapi.DeviceRequestAllocationResult{Request: "gpu", Driver: driver, Pool: "n1", Device: device}
		if share {
			r.ShareID = ptr.To(types.UID(device + "-share"))
		}
		if gated {
			r.BindingConditions = []string{tenancyv1.ConditionAdmitted}
		}
		return r
	}
	claim := func(results ...resourceapi.DeviceRequestAllocationResult) *resourceapi.ResourceClaim {
		return &resourceapi.ResourceClaim{Status: resourceapi.ResourceClaimStatus{Allocation: &resourceapi.AllocationResult{
			Devices: resourceapi.DeviceAllocationResult{Results: results},
		}}}
	}
	id := func(device string) DeviceID { return DeviceID{Driver: gpuapi.DriverName, Pool: "n1", Device: device} }
	for name, tc := range map[string]struct {
		claim *resourceapi.ResourceClaim
		want  []DeviceID
	}{
		"not allocated":               {claim: &resourceapi.ResourceClaim{}},
		"a share behind the gate":     {claim: claim(result(gpuapi.DriverName, "gpu-1-shared", true, true)), want: []DeviceID{id("gpu-1-shared")}},
		"a share without a gate":      {claim: claim(result(gpuapi.DriverName, "gpu-1-shared", true, false))},
		"a whole GPU behind the gate": {claim: claim(result(gpuapi.DriverName, "gpu-1", false, true))},
		"another driver's share":      {claim: claim(result("other.example.com", "gpu-1-shared", true, true))},
		"two shares of two GPUs, sorted": {
			claim: claim(result(gpuapi.DriverName, "gpu-3-shared", true, true), result(gpuapi.DriverName, "gpu-0-shared", true, true), result(gpuapi.DriverName, "gpu-2-shared", true, false)),
			want:  []DeviceID{id("gpu-0-shared"), id("gpu-3-shared")},
		},
	} {
		t.Run(name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, WaitedShares(tc.claim)); diff != "" {
				t.Errorf("WaitedShares (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRestamp(t *testing.T) {
	base := time.Date(2026, 12, 1, 5, 0, 0, 0, time.UTC)
	for name, tc := range map[string]struct {
		previous *metav1.Time
		now      time.Time
		want     time.Time
	}{
		"never stamped":              {now: base.Add(300 * time.Millisecond), want: base},
		"stamped long ago":           {previous: ptr.To(metav1.NewTime(base.Add(-time.Hour))), now: base.Add(300 * time.Millisecond), want: base},
		"stamped in the same second": {previous: ptr.To(metav1.NewTime(base)), now: base.Add(900 * time.Millisecond), want: base.Add(time.Second)},
		"stamped ahead of our clock": {previous: ptr.To(metav1.NewTime(base.Add(5 * time.Second))), now: base, want: base.Add(6 * time.Second)},
	} {
		t.Run(name, func(t *testing.T) {
			got := Restamp(tc.previous, tc.now)
			if !got.Time.Equal(tc.want) {
				t.Errorf("Restamp = %s, want %s", got.Time, tc.want)
			}
			if tc.previous != nil && !got.After(tc.previous.Time) {
				t.Errorf("Restamp = %s does not change the stamp %s", got.Time, tc.previous.Time)
			}
		})
	}
}
