package tenancy

import (
	"fmt"
	"maps"
	"slices"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
)

// labelsFor marks an object as the controller's, made for tenant.
func labelsFor(tenant string) map[string]string {
	l := map[string]string{tenancyv1.LabelManagedBy: tenancyv1.ManagedByValue}
	if tenant != "" {
		l[tenancyv1.LabelOwnerTenant] = tenant
	}
	return l
}

// Binding is the ValidatingAdmissionPolicyBinding that applies the claims
// policy, with the tenant as its parameter, to the tenant's namespaces. Its
// namespace selector is the tenant's own, so it holds for a namespace as
// soon as the namespace is labelled, whether or not the controller runs. A
// missing parameter (the tenant deleted before its binding) denies.
func Binding(t *tenancyv1.GPUTenant) *admissionv1.ValidatingAdmissionPolicyBinding {
	return &admissionv1.ValidatingAdmissionPolicyBinding{
		ObjectMeta: metav1.ObjectMeta{Name: tenancyv1.BindingName(t.Name), Labels: labelsFor(t.Name)},
		Spec: admissionv1.ValidatingAdmissionPolicyBindingSpec{
			PolicyName: tenancyv1.PolicyClaims,
			ParamRef: &admissionv1.ParamRef{
				Name:                    t.Name,
				ParameterNotFoundAction: ptr.To(admissionv1.DenyAction),
			},
			MatchResources: &admissionv1.MatchResources{
				NamespaceSelector: t.Spec.NamespaceSelector.DeepCopy(),
			},
			ValidationActions: []admissionv1.ValidationAction{admissionv1.Deny},
		},
	}
}

// UntenantedBinding applies the untenanted policy (Tessera's classes are
// refused) to every namespace that no tenant selects. Namespaces created
// after the controller last ran are refused too until it sees them: the
// binding names the tenant namespaces it knows, never the others.
func UntenantedBinding(tenantNamespaces []string) *admissionv1.ValidatingAdmissionPolicyBinding {
	b := &admissionv1.ValidatingAdmissionPolicyBinding{
		ObjectMeta: metav1.ObjectMeta{Name: tenancyv1.PolicyUntenanted, Labels: labelsFor("")},
		Spec: admissionv1.ValidatingAdmissionPolicyBindingSpec{
			PolicyName:        tenancyv1.PolicyUntenanted,
			MatchResources:    &admissionv1.MatchResources{NamespaceSelector: &metav1.LabelSelector{}},
			ValidationActions: []admissionv1.ValidationAction{admissionv1.Deny},
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

// OutsidersBinding applies the outsiders policy, with every tenant as a
// parameter, to every namespace that no tenant selects: their claims may not
// name a tenant's dedicated classes nor tolerate its sharing taint. Like
// UntenantedBinding, it names the tenant namespaces it knows, so a namespace
// created later is covered at once. A cluster without tenants has no
// parameter, and nothing to keep anyone off.
func OutsidersBinding(tenantNamespaces []string) *admissionv1.ValidatingAdmissionPolicyBinding {
	b := &admissionv1.ValidatingAdmissionPolicyBinding{
		ObjectMeta: metav1.ObjectMeta{Name: tenancyv1.PolicyOutsiders, Labels: labelsFor("")},
		Spec: admissionv1.ValidatingAdmissionPolicyBindingSpec{
			PolicyName: tenancyv1.PolicyOutsiders,
			ParamRef: &admissionv1.ParamRef{
				Selector:                &metav1.LabelSelector{},
				ParameterNotFoundAction: ptr.To(admissionv1.AllowAction),
			},
			MatchResources:    &admissionv1.MatchResources{NamespaceSelector: &metav1.LabelSelector{}},
			ValidationActions: []admissionv1.ValidationAction{admissionv1.Deny},
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

// QuotaResource is the ResourceQuota resource that counts a namespace's
// devices of class.
func QuotaResource(class string) corev1.ResourceName {
	return corev1.ResourceName(class + corev1.ResourceClaimsPerClass)
}

// Quota is the ResourceQuota of one tenant namespace, or nil if the tenant
// sets no namespace quota.
func Quota(t *tenancyv1.GPUTenant, namespace string) *corev1.ResourceQuota {
	if t.Spec.NamespaceQuota == nil || len(t.Spec.NamespaceQuota.Devices) == 0 {
		return nil
	}
	hard := corev1.ResourceList{}
	for _, class := range slices.Sorted(maps.Keys(t.Spec.NamespaceQuota.Devices)) {
		hard[QuotaResource(class)] = *resource.NewQuantity(t.Spec.NamespaceQuota.Devices[class], resource.DecimalSI)
	}
	return &corev1.ResourceQuota{
		ObjectMeta: metav1.ObjectMeta{Name: tenancyv1.QuotaName, Namespace: namespace, Labels: labelsFor(t.Name)},
		Spec:       corev1.ResourceQuotaSpec{Hard: hard},
	}
}

// DedicatedClasses are the tenant's DeviceClasses over its dedicated pool, one
// per shipped class, or none without a dedicated pool. Each selects what the
// shipped class selects, restricted to devices whose pool attribute is the
// tenant's pool, in one CEL expression (one selector costs the allocator
// less than two).
func DedicatedClasses(t *tenancyv1.GPUTenant) []*resourceapi.DeviceClass {
	if t.Spec.DedicatedPool == "" {
		return nil
	}
	var out []*resourceapi.DeviceClass
	for _, class := range gpuapi.Classes {
		out = append(out, &resourceapi.DeviceClass{
			ObjectMeta: metav1.ObjectMeta{Name: tenancyv1.DedicatedClassName(t.Name, class), Labels: labelsFor(t.Name)},
			Spec: resourceapi.DeviceClassSpec{Selectors: []resourceapi.DeviceSelector{{CEL: &resourceapi.CELDeviceSelector{
				Expression: fmt.Sprintf(`device.driver == %q && device.attributes[%q].%s == %q && device.attributes[%q].%s == %q`,
					gpuapi.DriverName, gpuapi.DriverName, gpuapi.AttrType, gpuapi.ClassType[class],
					gpuapi.DriverName, gpuapi.AttrPool, t.Spec.DedicatedPool),
			}}}},
		})
	}
	return out
}
