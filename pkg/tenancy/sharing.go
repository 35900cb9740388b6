package tenancy

import (
	"cmp"
	"slices"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
)

// SharingGroup is the sharing group of a tenant's claims: the tenant's name
// when its sharing is Exclusive (the default), GroupAny when it is Any, and
// GroupUntenanted for a nil tenant (a namespace of no tenant).
func SharingGroup(t *tenancyv1.GPUTenant) string {
	switch {
	case t == nil:
		return tenancyv1.GroupUntenanted
	case t.Spec.Sharing == tenancyv1.SharingAny:
		return tenancyv1.GroupAny
	default:
		return t.Name
	}
}

// SharedDevices are the time-shared GPUs of Tessera that the claim's
// allocation holds shares of, sorted, each once. A share is an allocation
// result with a share ID: only devices that allow multiple allocations get
// one.
func SharedDevices(claim *resourceapi.ResourceClaim) []DeviceID {
	if claim.Status.Allocation == nil {
		return nil
	}
	var out []DeviceID
	for _, r := range claim.Status.Allocation.Devices.Results {
		if r.Driver == gpuapi.DriverName && r.ShareID != nil {
			out = append(out, DeviceID{Driver: r.Driver, Pool: r.Pool, Device: r.Device})
		}
	}
	sortDevices(out)
	return slices.Compact(out)
}

func sortDevices(d []DeviceID) { slices.SortFunc(d, compareDeviceID) }

func compareDeviceID(a, b DeviceID) int {
	return cmp.Or(cmp.Compare(a.Driver, b.Driver), cmp.Compare(a.Pool, b.Pool), cmp.Compare(a.Device, b.Device))
}

// ShareHolder is a claim that holds shares, with its sharing group.
type ShareHolder struct {
	Claim types.NamespacedName
	Group string
	// Devices are the shared GPUs it holds shares of (SharedDevices).
	Devices []DeviceID
}

// Holders maps every shared GPU to the sorted sharing groups whose claims
// hold shares of it.
func Holders(holders []ShareHolder) map[DeviceID][]string {
	out := map[DeviceID][]string{}
	for _, h := range holders {
		for _, d := range h.Devices {
			if !slices.Contains(out[d], h.Group) {
				out[d] = append(out[d], h.Group)
			}
		}
	}
	for _, g := range out {
		slices.Sort(g)
	}
	return out
}

// TaintGroups is what each shared GPU is to be tainted with: the groups of
// the admitted (held) shares of it; for a GPU no one holds yet, the group of
// its pending shares (allocated, not yet decided) when they are all of one
// group, so that other tenants are kept off while the decision is made. Pending
// shares of two groups taint nothing: the guard admits one group and rejects
// the other, and a taint now would push the winner's next shares elsewhere.
func TaintGroups(held, pending []ShareHolder) map[DeviceID][]string {
	out := Holders(held)
	for d, groups := range Holders(pending) {
		if _, ok := out[d]; !ok && len(groups) == 1 {
			out[d] = groups
		}
	}
	return out
}

// SharingConflict checks the shares of a claim of group against what the
// other claims hold (holders must not include the claim itself). It returns
// an empty string when every shared GPU of the claim is free or held by group
// only, and otherwise a message for the claim's owner. The message names
// neither the GPU nor the group holding it: tenants do not learn of each
// other, nor where another tenant runs (a claim that tolerated another
// tenant's taint once learnt from this message the GPU that tenant held).
func SharingConflict(group string, claim *resourceapi.ResourceClaim, holders map[DeviceID][]string) string {
	for _, d := range SharedDevices(claim) {
		for _, g := range holders[d] {
			if g != group {
				return "a time-shared GPU allocated to the claim holds shares of another tenant; tenants do not share GPUs (spec.sharing), so the scheduler tries again elsewhere"
			}
		}
	}
	return ""
}

// Toleration is the device toleration that a sharing group's claims carry:
// it tolerates exactly the group's own TaintKeyTenant taint.
func Toleration(group string) resourceapi.DeviceToleration {
	return resourceapi.DeviceToleration{
		Key:      tenancyv1.TaintKeyTenant,
		Operator: resourceapi.DeviceTolerationOpEqual,
		Value:    group,
		Effect:   resourceapi.DeviceTaintEffectNoSchedule,
	}
}

// EntitledToleration reports whether tol is one of the two tenancy
// tolerations that the claims of tenant t (nil: of no tenant) may carry: its
// group's Toleration, or the Toleration of GroupFree, which keeps no one off
// (SharingRequests adds both).
func EntitledToleration(t *tenancyv1.GPUTenant, tol resourceapi.DeviceToleration) bool {
	return sameToleration(tol, Toleration(SharingGroup(t))) || sameToleration(tol, Toleration(tenancyv1.GroupFree))
}

// TaintRuleName is the name of the DeviceTaintRule for a shared GPU. Device
// names are DNS labels and pools (node names) DNS subdomains, so the name is
// a DNS subdomain and differs per GPU.
func TaintRuleName(d DeviceID) string {
	return d.Device + "." + d.Pool + ".sharing.tenancy.tessera.dev"
}

// TaintRules are the DeviceTaintRules of the shared GPUs, one per GPU,
// sorted by name: a NoSchedule taint TaintKeyTenant whose value is the group
// that holds the GPU (GroupConflict when two groups hold it), or GroupFree
// for a GPU of shared that no group holds. Every claim tolerates GroupFree
// in its fallback alternative (SharingRequests), so a free GPU is open to
// all; the taint only makes each group's claims try the GPUs it holds first.
// A held GPU missing from shared (its slice is gone) keeps its rule.
func TaintRules(shared []DeviceID, holders map[DeviceID][]string) []*resourceapi.DeviceTaintRule {
	values := map[DeviceID]string{}
	for _, d := range shared {
		values[d] = tenancyv1.GroupFree
	}
	for d, groups := range holders {
		switch len(groups) {
		case 0:
		case 1:
			values[d] = groups[0]
		default:
			values[d] = tenancyv1.GroupConflict
		}
	}
	out := make([]*resourceapi.DeviceTaintRule, 0, len(values))
	for d, value := range values {
		out = append(out, &resourceapi.DeviceTaintRule{
			ObjectMeta: metav1.ObjectMeta{Name: TaintRuleName(d), Labels: labelsFor("")},
			Spec: resourceapi.DeviceTaintRuleSpec{
				DeviceSelector: &resourceapi.DeviceTaintSelector{Driver: ptr.To(d.Driver), Pool: ptr.To(d.Pool), Device: ptr.To(d.Device)},
				Taint: resourceapi.DeviceTaint{
					Key: tenancyv1.TaintKeyTenant, Value: value, Effect: resourceapi.DeviceTaintEffectNoSchedule,
				},
			},
		})
	}
	slices.SortFunc(out, func(a, b *resourceapi.DeviceTaintRule) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

// SharedGPUs are the time-shared GPUs of Tessera that the slices publish
// (devices that allow multiple allocations), sorted.
func SharedGPUs(slices []resourceapi.ResourceSlice) []DeviceID {
	var out []DeviceID
	for i := range slices {
		s := &slices[i]
		if s.Spec.Driver != gpuapi.DriverName {
			continue
		}
		for _, d := range s.Spec.Devices {
			if ptr.Deref(d.AllowMultipleAllocations, false) {
				out = append(out, DeviceID{Driver: s.Spec.Driver, Pool: s.Spec.Pool.Name, Device: d.Name})
			}
		}
	}
	sortDevices(out)
	return out
}

// SharedGPUsWithWithdrawn are SharedGPUs plus the shared GPUs that rules
// (the sharing DeviceTaintRules that exist) name in a pool the slices still
// publish, sorted. A plugin that withdraws blocked devices takes a GPU's
// shared device out of its slices while the GPU is prepared whole or
// partitioned, and publishes it again once that is unprepared. Its rule stays
// meanwhile: the device comes back tainted as it left, not untainted (which
// every group's claims would take for a GPU of their own until the rule was
// made again), and a prepare costs no rule writes. A rule whose node no longer
// publishes a pool goes.
func SharedGPUsWithWithdrawn(published []resourceapi.ResourceSlice, rules []resourceapi.DeviceTaintRule) []DeviceID {
	out := SharedGPUs(published)
	have := map[DeviceID]bool{}
	for _, d := range out {
		have[d] = true
	}
	pools := map[string]bool{}
	for i := range published {
		if s := &published[i]; s.Spec.Driver == gpuapi.DriverName {
			pools[s.Spec.Pool.Name] = true
		}
	}
	for i := range rules {
		sel := rules[i].Spec.DeviceSelector
		if sel == nil || ptr.Deref(sel.Driver, "") != gpuapi.DriverName || !pools[ptr.Deref(sel.Pool, "")] || ptr.Deref(sel.Device, "") == "" {
			continue
		}
		if d := (DeviceID{Driver: *sel.Driver, Pool: *sel.Pool, Device: *sel.Device}); !have[d] {
			have[d] = true
			out = append(out, d)
		}
	}
	sortDevices(out)
	return out
}

// UntenantedSharingBinding binds the untenanted sharing policy (which adds
// GroupUntenanted's toleration) to every namespace that no tenant selects,
// like UntenantedBinding. A namespace created while the controller is down
// gets the toleration until the controller sees it: if a tenant selects it,
// the tenant's claims policy refuses the claim (the toleration is not the
// tenant's), so the mistake fails closed.
func UntenantedSharingBinding(tenantNamespaces []string) *admissionv1.MutatingAdmissionPolicyBinding {
	b := &admissionv1.MutatingAdmissionPolicyBinding{
		ObjectMeta: metav1.ObjectMeta{Name: tenancyv1.PolicySharingUntenanted, Labels: labelsFor("")},
		Spec: admissionv1.MutatingAdmissionPolicyBindingSpec{
			PolicyName:     tenancyv1.PolicySharingUntenanted,
			MatchResources: &admissionv1.MatchResources{NamespaceSelector: &metav1.LabelSelector{}},
		},
	}
	if len(tenantNamespaces) > 0 {
		ns := slices.Sorted(slices.Values(tenantNamespaces))
		b.Spec.MatchResources.NamespaceSelector.MatchExpressions = []metav1.LabelSelectorRequirement{{
			Key: corev1.LabelMetadataName, Operator: metav1.LabelSelectorOpNotIn, Values: slices.Compact(ns),
		}}
	}
	return b
}
