package tenancy

import (
	"cmp"
	"slices"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

// RunningClaim is a running claim of a borrowing tenant: a possible victim of
// reclaim.
type RunningClaim struct {
	// Claim names the claim.
	Claim types.NamespacedName
	// Tenant is the GPUTenant whose namespace holds it.
	Tenant string
	// Priority is the priority of the pod that uses it (its PriorityClass's
	// value): lower priorities are reclaimed first.
	Priority int32
	// Started is when its pod started: among equal priorities, the most
	// recently started is reclaimed first, losing the least work.
	Started time.Time
	// Cost is what evicting it takes off its tenant's usage, in the unit of
	// budgets (the caller's Cost of the tenant's holdings with and without
	// it: a share under sharing Exclusive may free nothing while the tenant
	// keeps another share of the GPU).
	Cost Usage
}

// TenantHolding is what a tenant holds (Used, as Cost prices it) and is
// guaranteed (Guaranteed).
type TenantHolding struct {
	Used, Guarantee Usage
}

// ChooseVictims is the pure choice of reclaim: which of candidates to evict
// so that their costs free need (memory and devices per class) for the
// starving tenant. It returns the victims and true, or nil and false when
// the candidates cannot free need without taking a tenant below its
// guarantee: then nothing is evicted, since evicting without helping the
// starving tenant only loses work.
//
// The rules:
//   - Order: lowest Priority first, then the most recently Started (then by
//     claim, so the choice is deterministic). Victims are taken in this order,
//     skipping candidates that free nothing still needed.
//   - Never a claim of a tenant at or below its guarantee: a candidate is
//     taken only if, with the victims already taken, its tenant stays at or
//     above its guarantee in memory and in every class the guarantee names.
//     Candidates of the starving tenant, or of a tenant not in tenants, are
//     never taken.
//   - Never more than needed: the victims taken are then dropped, the most
//     protected first (the reverse of the order), wherever the rest still
//     free need; so removing any victim returned would no longer free enough.
//
// The choice is greedy in the order above. Within one tenant's borrowed
// amount it can, like any greedy choice of a knapsack, take a small claim
// that blocks a larger one that alone would have sufficed and then report
// false; the caller then waits for the next reconcile. Whether the freed
// devices let the starving tenant's pods fit the nodes' device models is not
// decided here (that needs the scheduler's allocator).
func ChooseVictims(candidates []RunningClaim, tenants map[string]TenantHolding, starving string, need Usage) ([]RunningClaim, bool) {
	ordered := reclaimOrder(candidates)
	removed := map[string]Usage{}
	freed := Usage{Devices: map[string]int64{}}
	var victims []RunningClaim
	for _, c := range ordered {
		if covers(freed, need) {
			break
		}
		h, ok := tenants[c.Tenant]
		if !ok || c.Tenant == starving || !helps(c.Cost, freed, need) {
			continue
		}
		after := add(removed[c.Tenant], c.Cost)
		if !atOrAboveGuarantee(h, after) {
			continue
		}
		removed[c.Tenant] = after
		freed = add(freed, c.Cost)
		victims = append(victims, c)
	}
	if !covers(freed, need) {
		return nil, false
	}
	for i := len(victims) - 1; i >= 0; i-- {
		if rest := subtract(freed, victims[i].Cost); covers(rest, need) {
			freed = rest
			victims = slices.Delete(victims, i, i+1)
		}
	}
	return victims, true
}

// reclaimOrder sorts candidates in the order reclaim takes them: lowest
// Priority first, then the most recently Started, then by claim.
func reclaimOrder(candidates []RunningClaim) []RunningClaim {
	ordered := slices.Clone(candidates)
	slices.SortStableFunc(ordered, func(a, b RunningClaim) int {
		if c := cmp.Compare(a.Priority, b.Priority); c != 0 {
			return c
		}
		if c := b.Started.Compare(a.Started); c != 0 {
			return c
		}
		if c := strings.Compare(a.Claim.Namespace, b.Claim.Namespace); c != 0 {
			return c
		}
		return strings.Compare(a.Claim.Name, b.Claim.Name)
	})
	return ordered
}

// ChooseVictimsToFit is ChooseVictims where what must be freed is not an
// amount but a placement: fits says whether the starving tenant's pod would
// fit were the given victims gone (the caller runs the scheduler's allocator
// on the node's device model). A pod often needs less than its size freed
// (part of what it needs is free already) or something particular (a MIG
// placement whose memory slices are partly free), so no amount of budget
// says how much to evict.
//
// The rules are ChooseVictims':
//   - Order: candidates are taken in reclaimOrder (lowest priority, then the
//     most recently started), until fits holds.
//   - Never a claim of a tenant at or below its guarantee: a candidate is
//     taken only if its tenant, without the victims taken so far and it,
//     still holds at least its guarantee; candidates of the starving
//     tenant or of a tenant not in tenants are never taken.
//   - Never more than needed: the victims are then dropped, the most
//     protected first, wherever the rest still fit; so removing any victim
//     returned would no longer fit.
//
// It returns nil and false when even every candidate it may take would not
// make the pod fit (then nothing is evicted), and nil and true when the pod
// fits already. fits is called at most 2n+1 times for n candidates.
func ChooseVictimsToFit(candidates []RunningClaim, tenants map[string]TenantHolding, starving string, fits func([]RunningClaim) bool) ([]RunningClaim, bool) {
	if fits(nil) {
		return nil, true
	}
	removed := map[string]Usage{}
	var victims []RunningClaim
	found := false
	for _, c := range reclaimOrder(candidates) {
		h, ok := tenants[c.Tenant]
		if !ok || c.Tenant == starving {
			continue
		}
		after := add(removed[c.Tenant], c.Cost)
		if !atOrAboveGuarantee(h, after) {
			continue
		}
		removed[c.Tenant] = after
		victims = append(victims, c)
		if fits(victims) {
			found = true
			break
		}
	}
	if !found {
		return nil, false
	}
	// Dropping a victim only gives its tenant more, so the guarantee rule
	// still holds for the rest.
	for i := len(victims) - 2; i >= 0; i-- {
		rest := slices.Delete(slices.Clone(victims), i, i+1)
		if fits(rest) {
			victims = rest
		}
	}
	return victims, true
}

// covers reports whether freed frees all of need.
func covers(freed, need Usage) bool {
	if freed.Memory < need.Memory {
		return false
	}
	for c, n := range need.Devices {
		if freed.Devices[c] < n {
			return false
		}
	}
	return true
}

// helps reports whether cost frees something need still lacks.
func helps(cost, freed, need Usage) bool {
	if cost.Memory > 0 && freed.Memory < need.Memory {
		return true
	}
	for c, n := range need.Devices {
		if cost.Devices[c] > 0 && freed.Devices[c] < n {
			return true
		}
	}
	return false
}

// atOrAboveGuarantee reports whether a tenant holding h still holds at least
// its guarantee once removed is taken off.
func atOrAboveGuarantee(h TenantHolding, removed Usage) bool {
	if h.Used.Memory-removed.Memory < h.Guarantee.Memory {
		return false
	}
	for c, n := range h.Guarantee.Devices {
		if h.Used.Devices[c]-removed.Devices[c] < n {
			return false
		}
	}
	return true
}

func add(a, b Usage) Usage {
	out := Usage{Memory: a.Memory + b.Memory, Devices: map[string]int64{}}
	for c, n := range a.Devices {
		out.Devices[c] += n
	}
	for c, n := range b.Devices {
		out.Devices[c] += n
	}
	return out
}

func subtract(a, b Usage) Usage {
	out := Usage{Memory: a.Memory - b.Memory, Devices: map[string]int64{}}
	for c, n := range a.Devices {
		out.Devices[c] += n
	}
	for c, n := range b.Devices {
		out.Devices[c] -= n
	}
	return out
}
