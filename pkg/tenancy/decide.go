package tenancy

import (
	resourceapi "k8s.io/api/resource/v1"

	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
)

// Decision is the controller's answer for one allocated claim.
type Decision struct {
	// Admit sets the admitted binding condition; otherwise the rejected one.
	Admit bool
	// Reason and Message go into the condition and the Events.
	Reason, Message string
	// Cost is what admitting the claim adds to the tenant's usage: its
	// devices, and the held GPU memory by which it raises the tenant's Cost
	// (nothing, for a share of a GPU the Exclusive tenant already pays for).
	Cost Usage
	// Holdings are the claim's own holdings, which the tenant holds once it
	// is admitted.
	Holdings []Holding
}

// Decide admits claim for tenant t if the claim asks only for what the tenant
// may use and its allocation fits the budget on top of held (the holdings of
// the tenant's admitted claims). A nil tenant (a namespace of no tenant) has
// no budget: its claim is admitted at once unless it names a tenant's
// dedicated class or tolerates a tenancy taint (UntenantedViolations).
func Decide(t *tenancyv1.GPUTenant, held []Holding, claim *resourceapi.ResourceClaim, memory map[DeviceID]int64) Decision {
	if t == nil {
		if v := UntenantedViolations(&claim.Spec); len(v) > 0 {
			return Decision{Reason: tenancyv1.ReasonNotAllowed, Message: v[0].Message}
		}
		return Decision{Admit: true, Reason: tenancyv1.ReasonNoTenancy, Message: "namespace belongs to no GPUTenant"}
	}
	if v := ClaimViolations(t, &claim.Spec); len(v) > 0 {
		return Decision{Reason: tenancyv1.ReasonNotAllowed, Message: v[0].Message}
	}
	own, err := ClaimHoldings(claim, memory)
	if err != nil {
		return Decision{Reason: tenancyv1.ReasonDeviceAbsent, Message: "GPUTenant " + t.Name + ": " + err.Error()}
	}
	used := Cost(t, held)
	after := Cost(t, append(append([]Holding(nil), held...), own...))
	add := Cost(t, own)
	// The claim's devices count on their own; its memory is what it adds to
	// the tenant's whole, where shares of one GPU are priced together.
	add.Memory = after.Memory - used.Memory
	if ok, why := Fits(t, used, add); !ok {
		if holdsShares(own) {
			why += " (a share costs its dominant fraction of its GPU's memory, the whole GPU's under sharing Exclusive: docs/tenancy.md#what-an-allocation-costs)"
		}
		return Decision{Reason: tenancyv1.ReasonOverBudget, Message: why, Cost: add, Holdings: own}
	}
	return Decision{Admit: true, Reason: tenancyv1.ReasonAdmitted, Message: "GPUTenant " + t.Name + ": within budget", Cost: add, Holdings: own}
}

func holdsShares(h []Holding) bool {
	for _, x := range h {
		if x.SharedGPUMemory > 0 {
			return true
		}
	}
	return false
}
