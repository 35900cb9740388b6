package tenancy

import (
	"fmt"
	"slices"
	"strings"

	resourceapi "k8s.io/api/resource/v1"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
)

// Violation is one reason a tenant's claim is refused.
type Violation struct {
	// Request is the request ("gpu") or firstAvailable alternative
	// ("gpu/small") concerned; empty for claim-wide config.
	Request string
	// Message names the tenant, the request and what it may not do.
	Message string
}

// AllowedClasses are the DeviceClasses a tenant's claims may name: its
// allowlist and, with a dedicated pool, its dedicated classes.
func AllowedClasses(t *tenancyv1.GPUTenant) []string {
	out := slices.Clone(t.Spec.AllowedDeviceClasses)
	if t.Spec.DedicatedPool != "" {
		out = append(out, tenancyv1.DedicatedClassNames(t.Name)...)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// ClaimViolations is everything in a claim (or a template's claim) spec that
// the tenant may not ask for: a class outside AllowedClasses in any request
// or firstAvailable alternative, admin access without AllowAdminAccess,
// opaque config for gpu.tessera.dev without AllowDeviceConfig, and
// tolerations of tenancy taints other than the tenant's EntitledToleration.
// It is the Go twin of the admission policy
// (deployments' ValidatingAdmissionPolicy), which enforces the same rules in
// the API server; the controller applies it again at allocation time, to
// claims created before their tenant existed.
func ClaimViolations(t *tenancyv1.GPUTenant, spec *resourceapi.ResourceClaimSpec) []Violation {
	allowed := AllowedClasses(t)
	var out []Violation
	refuse := func(request, format string, args ...any) {
		out = append(out, Violation{Request: request, Message: fmt.Sprintf("GPUTenant %s: ", t.Name) + fmt.Sprintf(format, args...)})
	}
	checkClass := func(request, class string) {
		if !slices.Contains(allowed, class) {
			refuse(request, "request %s names DeviceClass %s, which the tenant may not use (allowed: %s)", request, class, strings.Join(allowed, ", "))
		}
	}
	checkTolerations := func(request string, tols []resourceapi.DeviceToleration) {
		for _, tol := range tols {
			if TolerationCoversTenancy(tol) && !EntitledToleration(t, tol) {
				refuse(request, "request %s tolerates the tenancy taint %q, which tenants may not do", request, tolerationKey(tol))
			}
		}
	}
	for _, r := range spec.Devices.Requests {
		if r.Exactly != nil {
			checkClass(r.Name, r.Exactly.DeviceClassName)
			if r.Exactly.AdminAccess != nil && *r.Exactly.AdminAccess && !t.Spec.AllowAdminAccess {
				refuse(r.Name, "request %s asks for admin access, which the tenant may not use", r.Name)
			}
			checkTolerations(r.Name, r.Exactly.Tolerations)
		}
		for _, s := range r.FirstAvailable {
			name := r.Name + "/" + s.Name
			checkClass(name, s.DeviceClassName)
			checkTolerations(name, s.Tolerations)
		}
	}
	if !t.Spec.AllowDeviceConfig {
		for _, c := range spec.Devices.Config {
			if c.Opaque != nil && c.Opaque.Driver == gpuapi.DriverName {
				refuse(strings.Join(c.Requests, ","), "opaque config for %s is not allowed for the tenant", gpuapi.DriverName)
			}
		}
	}
	return out
}

// TolerationCoversTenancy reports whether a toleration may tolerate a tenancy
// taint: its key has the tenancy prefix, or it has no key. A toleration
// without a key matches the taints of every key (DRA matches tolerations as
// core Kubernetes does: "An empty key ... matches all keys"), so with
// operator Exists it tolerates every taint, and with operator Equal and a
// tenant's name as value it tolerates that tenant's sharing taint.
func TolerationCoversTenancy(tol resourceapi.DeviceToleration) bool {
	if tol.Key == "" {
		return true
	}
	return strings.HasPrefix(tol.Key, tenancyv1.TaintPrefix)
}

func tolerationKey(tol resourceapi.DeviceToleration) string {
	if tol.Key == "" {
		return "*"
	}
	return tol.Key
}
