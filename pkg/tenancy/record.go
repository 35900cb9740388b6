package tenancy

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
)

// EncodeRecord is rec as the data of a status.devices entry.
func EncodeRecord(rec tenancyv1.DecisionRecord) (*runtime.RawExtension, error) {
	rec.APIVersion, rec.Kind = tenancyv1.SchemeGroupVersion.String(), tenancyv1.KindDecisionRecord
	raw, err := json.Marshal(rec)
	if err != nil {
		return nil, fmt.Errorf("encode decision record: %w", err)
	}
	return &runtime.RawExtension{Raw: raw}, nil
}

// DecodeRecord is the decision record in a status.devices entry's data, if
// it holds one.
func DecodeRecord(data *runtime.RawExtension) (tenancyv1.DecisionRecord, bool) {
	var rec tenancyv1.DecisionRecord
	if data == nil || len(data.Raw) == 0 || json.Unmarshal(data.Raw, &rec) != nil {
		return tenancyv1.DecisionRecord{}, false
	}
	if rec.APIVersion != tenancyv1.SchemeGroupVersion.String() || rec.Kind != tenancyv1.KindDecisionRecord {
		return tenancyv1.DecisionRecord{}, false
	}
	return rec, true
}

// RecordedMemory is the device memory that the controller recorded when it
// admitted the claims (DecisionRecord): for each Tessera device of their
// allocations whose status entry is admitted and carries a record with a
// memory, the largest such memory. Records are read only from admitted
// entries: a record goes with its decision.
func RecordedMemory(claims []*resourceapi.ResourceClaim) map[DeviceID]int64 {
	out := map[DeviceID]int64{}
	for _, c := range claims {
		if c.Status.Allocation == nil {
			continue
		}
		for _, r := range c.Status.Allocation.Devices.Results {
			if r.Driver != gpuapi.DriverName || !slices.Contains(r.BindingConditions, tenancyv1.ConditionAdmitted) {
				continue
			}
			st := DeviceStatus(c, r)
			if st == nil || !meta.IsStatusConditionTrue(st.Conditions, tenancyv1.ConditionAdmitted) {
				continue
			}
			rec, ok := DecodeRecord(st.Data)
			if !ok || rec.DeviceMemory <= 0 {
				continue
			}
			id := DeviceID{r.Driver, r.Pool, r.Device}
			out[id] = max(out[id], rec.DeviceMemory)
		}
	}
	return out
}

// CostingMemory is the memory to cost devices with, from what the slices
// say (published now, or remembered: DeviceMemory, RememberMemory) and what
// the controller recorded at admission (RecordedMemory): a device known to
// one only is taken from it, one known to both at the larger, so that a
// stale record never makes a device cheaper than its node publishes, and a
// node never makes an admitted device cheaper than it was admitted at. The
// result is a new map.
func CostingMemory(known, recorded map[DeviceID]int64) map[DeviceID]int64 {
	out := maps.Clone(known)
	if out == nil {
		out = map[DeviceID]int64{}
	}
	for d, m := range recorded {
		out[d] = max(out[d], m)
	}
	return out
}
