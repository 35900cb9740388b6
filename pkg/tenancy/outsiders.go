package tenancy

import (
	"fmt"
	"slices"
	"strings"

	resourceapi "k8s.io/api/resource/v1"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
)

// IsDedicatedClass reports whether class has the form of a tenant's
// dedicated DeviceClass (tenancyv1.DedicatedClassName), whether or not that
// tenant exists.
func IsDedicatedClass(class string) bool {
	for _, shipped := range gpuapi.Classes {
		if prefix, ok := strings.CutSuffix(class, ".dedicated."+shipped); ok && prefix != "" {
			return true
		}
	}
	return false
}

// OutsiderViolations is what a claim (or a template's claim) in a namespace
// that tenant t does not select may not ask for: one of t's dedicated
// classes, or a toleration that may tolerate t's sharing taint (a toleration
// of TaintKeyTenant or without key, with operator Exists or value t's name).
// A namespace of no tenant is seen by no tenant's claims policy, so without
// this rule it could name a tenant's dedicated classes and take its GPUs, or
// tolerate its taint and be allocated shares beside it.
//
// It is the Go twin of the admission policy outsiders.tenancy.tessera.dev,
// which the controller binds, with every GPUTenant as a parameter, to every
// namespace no tenant selects (OutsidersBinding); the claims policy refuses
// the same in tenants' namespaces. Its messages name neither t nor its GPUs: whoever is refused
// learns nothing of other tenants.
func OutsiderViolations(t *tenancyv1.GPUTenant, spec *resourceapi.ResourceClaimSpec) []Violation {
	dedicated := tenancyv1.DedicatedClassNames(t.Name)
	var out []Violation
	check := func(request, class string, tols []resourceapi.DeviceToleration) {
		if slices.Contains(dedicated, class) {
			out = append(out, Violation{Request: request, Message: fmt.Sprintf(
				"request %s names DeviceClass %s, which is dedicated to a GPUTenant that does not select the namespace", request, class)})
		}
		if slices.ContainsFunc(tols, func(tol resourceapi.DeviceToleration) bool { return mayTolerateGroup(tol, t.Name) }) {
			out = append(out, Violation{Request: request, Message: fmt.Sprintf(
				"request %s tolerates a tenancy taint that keeps the namespace off GPUs of another GPUTenant", request)})
		}
	}
	for _, r := range spec.Devices.Requests {
		if r.Exactly != nil {
			check(r.Name, r.Exactly.DeviceClassName, r.Exactly.Tolerations)
		}
		for _, s := range r.FirstAvailable {
			check(r.Name+"/"+s.Name, s.DeviceClassName, s.Tolerations)
		}
	}
	return out
}

// mayTolerateGroup reports whether tol may tolerate the sharing taint of
// group, whatever the taint's effect: DRA's matching
// (k8s.io/dynamic-resource-allocation/resourceclaim.ToleratesTaint) lets an
// empty key match every key and operator Exists every value.
func mayTolerateGroup(tol resourceapi.DeviceToleration, group string) bool {
	return (tol.Key == "" || tol.Key == tenancyv1.TaintKeyTenant) &&
		(tol.Operator == resourceapi.DeviceTolerationOpExists || tol.Value == group)
}

// UntenantedViolations is what the controller refuses, at allocation time,
// in a claim of a namespace of no tenant: any tenant's dedicated class, and
// tolerations of tenancy taints other than those the untenanted sharing
// policy adds (EntitledToleration of no tenant). The admission policies
// refuse the same before the claim exists; this holds for claims created
// while no policy was in place (defence in depth).
func UntenantedViolations(spec *resourceapi.ResourceClaimSpec) []Violation {
	var out []Violation
	check := func(request, class string, tols []resourceapi.DeviceToleration) {
		if IsDedicatedClass(class) {
			out = append(out, Violation{Request: request, Message: fmt.Sprintf(
				"namespace belongs to no GPUTenant: request %s names DeviceClass %s, which is dedicated to a GPUTenant", request, class)})
		}
		for _, tol := range tols {
			if TolerationCoversTenancy(tol) && !EntitledToleration(nil, tol) {
				out = append(out, Violation{Request: request, Message: fmt.Sprintf(
					"namespace belongs to no GPUTenant: request %s tolerates the tenancy taint %q, which only the sharing policy may add", request, tolerationKey(tol))})
				break
			}
		}
	}
	for _, r := range spec.Devices.Requests {
		if r.Exactly != nil {
			check(r.Name, r.Exactly.DeviceClassName, r.Exactly.Tolerations)
		}
		for _, s := range r.FirstAvailable {
			check(r.Name+"/"+s.Name, s.DeviceClassName, s.Tolerations)
		}
	}
	return out
}
