package tenancy

import (
	"slices"
	"strings"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/utils/ptr"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
)

// IsSharedClass reports whether class is one of Tessera's classes of
// time-shared GPUs: the shipped one or a tenant's dedicated one.
func IsSharedClass(class string) bool {
	return class == gpuapi.ClassShared || strings.HasSuffix(class, "."+gpuapi.ClassShared)
}

// SharingRequests are a claim's requests as the sharing admission policies
// leave them for a claim of group (the policies are the API server's twin of
// this function, chart/templates/sharing-policies.yaml):
//
//   - an exact request for one of Tessera's time-shared classes, without
//     admin access, becomes a firstAvailable request of two copies of it:
//     SubrequestOwn, which tolerates the group's taint only and so fits only
//     GPUs the group holds, then SubrequestAny, which also tolerates
//     GroupFree. So the group's shares go to GPUs it holds before free ones;
//   - every other exact request and every firstAvailable alternative gets
//     the group's toleration and GroupFree's, where it lacks them.
//
// A namespace that has just joined a tenant still matches the untenanted
// policy's binding until the controller has taken it out, so both policies
// may shape one claim, in either order. They agree on the tenant's group:
// the tenant's policy first drops the Toleration of GroupUntenanted (which
// only the untenanted policy adds, and which the tenant's claims policy
// would refuse), and the untenanted policy (group GroupUntenanted) leaves a
// claim alone that already tolerates another group's taint (the tenant's
// policy came first). A tenant's claim never passes admission tolerating
// GroupUntenanted either way.
func SharingRequests(group string, requests []resourceapi.DeviceRequest) []resourceapi.DeviceRequest {
	leaveAlone := group == tenancyv1.GroupUntenanted && tolerateOtherGroup(requests)
	own, free := Toleration(group), Toleration(tenancyv1.GroupFree)
	out := make([]resourceapi.DeviceRequest, 0, len(requests))
	for _, r := range requests {
		r = *r.DeepCopy()
		if group != tenancyv1.GroupUntenanted {
			dropToleration(&r, Toleration(tenancyv1.GroupUntenanted))
		}
		switch {
		case leaveAlone:
			// A tenant's policy has shaped the claim already.
		case r.Exactly != nil && IsSharedClass(r.Exactly.DeviceClassName) && !ptr.Deref(r.Exactly.AdminAccess, false):
			sub := func(name string, tols ...resourceapi.DeviceToleration) resourceapi.DeviceSubRequest {
				e := r.Exactly.DeepCopy()
				return resourceapi.DeviceSubRequest{
					Name: name, DeviceClassName: e.DeviceClassName, Selectors: e.Selectors,
					AllocationMode: e.AllocationMode, Count: e.Count, Capacity: e.Capacity,
					Tolerations: withTolerations(e.Tolerations, tols...),
				}
			}
			r = resourceapi.DeviceRequest{Name: r.Name, FirstAvailable: []resourceapi.DeviceSubRequest{
				sub(tenancyv1.SubrequestOwn, own), sub(tenancyv1.SubrequestAny, own, free),
			}}
		case r.Exactly != nil:
			r.Exactly.Tolerations = withTolerations(r.Exactly.Tolerations, own, free)
		default:
			for i := range r.FirstAvailable {
				r.FirstAvailable[i].Tolerations = withTolerations(r.FirstAvailable[i].Tolerations, own, free)
			}
		}
		out = append(out, r)
	}
	return out
}

// withTolerations appends each of add that have lacks.
func withTolerations(have []resourceapi.DeviceToleration, add ...resourceapi.DeviceToleration) []resourceapi.DeviceToleration {
	out := slices.Clone(have)
	for _, a := range add {
		if !slices.ContainsFunc(out, func(t resourceapi.DeviceToleration) bool { return sameToleration(t, a) }) {
			out = append(out, a)
		}
	}
	return out
}

// tolerateOtherGroup reports whether a request or alternative carries the
// Toleration of a group other than GroupFree and GroupUntenanted.
func tolerateOtherGroup(requests []resourceapi.DeviceRequest) bool {
	other := func(tols []resourceapi.DeviceToleration) bool {
		return slices.ContainsFunc(tols, func(t resourceapi.DeviceToleration) bool {
			return t.Value != tenancyv1.GroupFree && t.Value != tenancyv1.GroupUntenanted && sameToleration(t, Toleration(t.Value))
		})
	}
	for _, r := range requests {
		if r.Exactly != nil && other(r.Exactly.Tolerations) {
			return true
		}
		for _, s := range r.FirstAvailable {
			if other(s.Tolerations) {
				return true
			}
		}
	}
	return false
}

// dropToleration drops tol from the request and from each alternative.
func dropToleration(r *resourceapi.DeviceRequest, tol resourceapi.DeviceToleration) {
	drop := func(t resourceapi.DeviceToleration) bool { return sameToleration(t, tol) }
	if r.Exactly != nil {
		r.Exactly.Tolerations = slices.DeleteFunc(r.Exactly.Tolerations, drop)
	}
	for i := range r.FirstAvailable {
		r.FirstAvailable[i].Tolerations = slices.DeleteFunc(r.FirstAvailable[i].Tolerations, drop)
	}
}

func sameToleration(a, b resourceapi.DeviceToleration) bool {
	return a.Key == b.Key && a.Operator == b.Operator && a.Value == b.Value && a.Effect == b.Effect
}

// BlockedByFreeTaint reports whether the claim waits for a time-shared GPU
// of Tessera's classes in a request none of whose shared alternatives
// tolerates GroupFree: a claim created before the sharing admission policies
// were in place (or without them). Claims are immutable, so such a claim
// could never be allocated a free GPU while free GPUs carry the GroupFree
// taint. (A request the policy shaped tolerates it in SubrequestAny.)
//
// A request that may tolerate any tenancy taint (TolerationCoversTenancy)
// does not block: a policy shaped it, or its author chose its tenancy
// tolerations (and the untenanted policy then leaves it alone). Such a claim
// keeps itself off free GPUs by its own choice; it must not lift the free
// taints of the whole cluster. (Before this rule, a claim of a namespace of no tenant
// that tolerated another tenant's taint, which the untenanted policy leaves
// alone, made the controller delete every free taint, and creating and
// deleting it in a loop churned them without end.)
func BlockedByFreeTaint(claim *resourceapi.ResourceClaim) bool {
	if claim.Status.Allocation != nil || claim.DeletionTimestamp != nil {
		return false
	}
	free := Toleration(tenancyv1.GroupFree)
	toleratesFree := func(tols []resourceapi.DeviceToleration) bool {
		return slices.ContainsFunc(tols, func(t resourceapi.DeviceToleration) bool { return sameToleration(t, free) })
	}
	chosen := func(tols []resourceapi.DeviceToleration) bool {
		return slices.ContainsFunc(tols, TolerationCoversTenancy)
	}
	for _, r := range claim.Spec.Devices.Requests {
		if r.Exactly != nil && IsSharedClass(r.Exactly.DeviceClassName) && !toleratesFree(r.Exactly.Tolerations) && !chosen(r.Exactly.Tolerations) {
			return true
		}
		shared, reaches := false, false
		for _, s := range r.FirstAvailable {
			if IsSharedClass(s.DeviceClassName) {
				shared = true
				reaches = reaches || toleratesFree(s.Tolerations) || chosen(s.Tolerations)
			}
		}
		if shared && !reaches {
			return true
		}
	}
	return false
}
