package tenancy

import (
	"slices"
	"strings"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"

	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
)

// Guaranteed is t's guarantee as a Usage: spec.guarantee.gpuMemory (zero when
// unset: held GPU memory is the unit every budget counts in, so a tenant that
// names no guarantee is guaranteed none of it) and the device counts of the
// classes spec.guarantee.devices names. A class the guarantee does not name
// is not guaranteed per device; its devices still count by their memory.
func Guaranteed(t *tenancyv1.GPUTenant) Usage {
	u := Usage{Devices: map[string]int64{}}
	g := t.Spec.Guarantee
	if g == nil {
		return u
	}
	if g.GPUMemory != nil {
		u.Memory = g.GPUMemory.Value()
	}
	for c, n := range g.Devices {
		u.Devices[c] = n
	}
	return u
}

// Borrowed is what a tenant holding used holds above its guarantee: held GPU
// memory above the guaranteed memory, and devices above the guarantee of each
// class the guarantee names; nothing is ever negative, and classes with
// nothing borrowed are left out.
func Borrowed(t *tenancyv1.GPUTenant, used Usage) Usage {
	g := Guaranteed(t)
	b := Usage{Memory: max(0, used.Memory-g.Memory), Devices: map[string]int64{}}
	for c, n := range g.Devices {
		if over := used.Devices[c] - n; over > 0 {
			b.Devices[c] = over
		}
	}
	return b
}

// IsBorrowing reports whether b (a Borrowed result) borrows anything.
func IsBorrowing(b Usage) bool {
	if b.Memory > 0 {
		return true
	}
	for _, n := range b.Devices {
		if n > 0 {
			return true
		}
	}
	return false
}

// AdmittedAt is when claim was admitted: the earliest transition of the
// admitted binding condition on its devices (zero if none is set). The
// controller sets that condition once per allocation, so the time is stable.
func AdmittedAt(claim *resourceapi.ResourceClaim) time.Time {
	var at time.Time
	for _, d := range claim.Status.Devices {
		c := meta.FindStatusCondition(d.Conditions, tenancyv1.ConditionAdmitted)
		if c == nil || c.Status != "True" {
			continue
		}
		if t := c.LastTransitionTime.Time; at.IsZero() || t.Before(at) {
			at = t
		}
	}
	return at
}

// BorrowingClaims are the tenant's admitted claims that borrow, by this rule:
// the claims are taken in the order they were admitted (AdmittedAt, then
// namespace and name), and a claim borrows when what the claims up to and
// including it cost (Cost) is above the guarantee in any resource. So the
// earliest admitted claims that fit the guarantee are the tenant's own, the
// most recently admitted ones beyond it are borrowed, and which is which
// changes only when claims come or go, never from one reconcile to the next.
// memory is the device memory to cost with (as for HeldBy); a claim that
// cannot be costed is skipped, and counts toward nothing.
func BorrowingClaims(t *tenancyv1.GPUTenant, claims []*resourceapi.ResourceClaim, memory map[DeviceID]int64) map[types.NamespacedName]bool {
	ordered := slices.Clone(claims)
	slices.SortStableFunc(ordered, func(a, b *resourceapi.ResourceClaim) int {
		if c := AdmittedAt(a).Compare(AdmittedAt(b)); c != 0 {
			return c
		}
		if c := strings.Compare(a.Namespace, b.Namespace); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	out := map[types.NamespacedName]bool{}
	var held []Holding
	for _, c := range ordered {
		h, err := ClaimHoldings(c, memory)
		if err != nil {
			continue
		}
		held = append(held, h...)
		if IsBorrowing(Borrowed(t, Cost(t, held))) {
			out[types.NamespacedName{Namespace: c.Namespace, Name: c.Name}] = true
		}
	}
	return out
}
