package tenancy

import (
	"errors"

	resourceapi "k8s.io/api/resource/v1"

	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
)

// Decision is the controller's answer for one allocated claim.
type Decision struct {
	// Admit sets the admitted binding condition; otherwise the rejected one.
	Admit bool
	// Reason and Message go into the condition and the Events.
	Reason, Message string
	// Cost is what the claim's allocation holds.
	Cost Usage
}

// HeldBy sums what the given claims' allocations hold. The caller passes the
// tenant's admitted claims.
func HeldBy(claims []*resourceapi.ResourceClaim, memory map[DeviceID]int64) (Usage, error) {
	var held Usage
	var errs []error
	for _, c := range claims {
		u, err := ClaimUsage(c, memory)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		held = held.Add(u)
	}
	return held, errors.Join(errs...)
}

// Decide admits claim for tenant t if the claim asks only for what the tenant
// may use and its allocation fits the budget on top of held. A nil tenant
// (a namespace of no tenant) is admitted at once.
func Decide(t *tenancyv1.GPUTenant, held Usage, claim *resourceapi.ResourceClaim, memory map[DeviceID]int64) Decision {
	if t == nil {
		return Decision{Admit: true, Reason: tenancyv1.ReasonNoTenancy, Message: "namespace belongs to no GPUTenant"}
	}
	if v := ClaimViolations(t, &claim.Spec); len(v) > 0 {
		return Decision{Reason: tenancyv1.ReasonNotAllowed, Message: v[0].Message}
	}
	cost, err := ClaimUsage(claim, memory)
	if err != nil {
		return Decision{Reason: tenancyv1.ReasonDeviceAbsent, Message: "GPUTenant " + t.Name + ": " + err.Error()}
	}
	if ok, why := Fits(t, held, cost); !ok {
		return Decision{Reason: tenancyv1.ReasonOverBudget, Message: why, Cost: cost}
	}
	return Decision{Admit: true, Reason: tenancyv1.ReasonAdmitted, Message: "GPUTenant " + t.Name + ": within budget", Cost: cost}
}
