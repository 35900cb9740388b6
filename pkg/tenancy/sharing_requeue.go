package tenancy

import (
	"time"

	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
)

// WaitedShares are the time-shared GPUs of Tessera whose shares the claim's
// allocation holds behind binding conditions, sorted, each once: the shares
// for which the scheduler waited in its binding cycle.
func WaitedShares(claim *resourceapi.ResourceClaim) []DeviceID {
	if claim.Status.Allocation == nil {
		return nil
	}
	waited := map[DeviceID]bool{}
	for _, r := range claim.Status.Allocation.Devices.Results {
		if r.Driver == gpuapi.DriverName && r.ShareID != nil && len(r.BindingConditions) > 0 {
			waited[DeviceID{Driver: r.Driver, Pool: r.Pool, Device: r.Device}] = true
		}
	}
	var out []DeviceID
	for _, d := range SharedDevices(claim) {
		if waited[d] {
			out = append(out, d)
		}
	}
	return out
}

// Restamp is the new timeAdded of a taint that is stamped again at now: now
// at the API's one-second resolution, and at least a second after the
// previous stamp, so that the stored taint always changes (two stamps within
// a second would otherwise store the same time and change nothing).
func Restamp(previous *metav1.Time, now time.Time) metav1.Time {
	next := now.Truncate(time.Second)
	if previous != nil && !next.After(previous.Time) {
		next = previous.Truncate(time.Second).Add(time.Second)
	}
	return metav1.NewTime(next)
}
