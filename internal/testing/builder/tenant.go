package builder

import (
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
)

// TenantBuilder builds a GPUTenant.
type TenantBuilder struct{ tenant tenancyv1.GPUTenant }

// MakeTenant starts a tenant named name that owns the namespaces labelled
// with Capsule's tenant label set to its name (see MakeNamespace), and
// allows nothing else until a test says so.
func MakeTenant(name string) *TenantBuilder {
	return &TenantBuilder{tenant: tenancyv1.GPUTenant{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: tenancyv1.GPUTenantSpec{NamespaceSelector: metav1.LabelSelector{
			MatchLabels: map[string]string{tenancyv1.LabelCapsuleTenant: name},
		}},
	}}
}

// Selector replaces the tenant's namespace selector.
func (b *TenantBuilder) Selector(selector metav1.LabelSelector) *TenantBuilder {
	b.tenant.Spec.NamespaceSelector = selector
	return b
}

// Classes sets the DeviceClasses the tenant may use.
func (b *TenantBuilder) Classes(classes ...string) *TenantBuilder {
	b.tenant.Spec.AllowedDeviceClasses = classes
	return b
}

// AdminAccess allows the tenant's claims to ask for admin access.
func (b *TenantBuilder) AdminAccess() *TenantBuilder {
	b.tenant.Spec.AllowAdminAccess = true
	return b
}

// DeviceConfig allows the tenant's claims to carry opaque device config.
func (b *TenantBuilder) DeviceConfig() *TenantBuilder {
	b.tenant.Spec.AllowDeviceConfig = true
	return b
}

// Pool dedicates the devices of pool to the tenant.
func (b *TenantBuilder) Pool(pool string) *TenantBuilder {
	b.tenant.Spec.DedicatedPool = pool
	return b
}

// Sharing sets the tenant's sharing policy.
func (b *TenantBuilder) Sharing(policy tenancyv1.SharingPolicy) *TenantBuilder {
	b.tenant.Spec.Sharing = policy
	return b
}

// Memory sets the tenant-wide GPU memory budget, e.g. "36Gi".
func (b *TenantBuilder) Memory(quantity string) *TenantBuilder {
	b.budget().GPUMemory = ptr.To(resource.MustParse(quantity))
	return b
}

// Devices sets the tenant-wide budget of devices of class.
func (b *TenantBuilder) Devices(class string, n int64) *TenantBuilder {
	budget := b.budget()
	if budget.Devices == nil {
		budget.Devices = map[string]int64{}
	}
	budget.Devices[class] = n
	return b
}

// NamespaceQuota sets the per-namespace limit of devices of class.
func (b *TenantBuilder) NamespaceQuota(class string, n int64) *TenantBuilder {
	if b.tenant.Spec.NamespaceQuota == nil {
		b.tenant.Spec.NamespaceQuota = &tenancyv1.NamespaceQuota{Devices: map[string]int64{}}
	}
	b.tenant.Spec.NamespaceQuota.Devices[class] = n
	return b
}

// GuaranteedMemory sets the GPU memory the tenant is guaranteed, e.g. "80Gi".
func (b *TenantBuilder) GuaranteedMemory(quantity string) *TenantBuilder {
	if b.tenant.Spec.Guarantee == nil {
		b.tenant.Spec.Guarantee = &tenancyv1.Budget{}
	}
	b.tenant.Spec.Guarantee.GPUMemory = ptr.To(resource.MustParse(quantity))
	return b
}

// IdleReclaim opts the tenant in to the eviction of pods whose claims have
// been idle for longer than after.
func (b *TenantBuilder) IdleReclaim(after time.Duration) *TenantBuilder {
	b.tenant.Spec.IdleReclaim = &tenancyv1.IdleReclaim{After: metav1.Duration{Duration: after}}
	return b
}

func (b *TenantBuilder) budget() *tenancyv1.Budget {
	if b.tenant.Spec.Budget == nil {
		b.tenant.Spec.Budget = &tenancyv1.Budget{}
	}
	return b.tenant.Spec.Budget
}

// Obj returns the tenant.
func (b *TenantBuilder) Obj() *tenancyv1.GPUTenant {
	return b.tenant.DeepCopy()
}

// NamespaceBuilder builds a Namespace.
type NamespaceBuilder struct{ namespace corev1.Namespace }

// MakeNamespace starts a namespace named name with no labels.
func MakeNamespace(name string) *NamespaceBuilder {
	return &NamespaceBuilder{namespace: corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}}
}

// Tenant labels the namespace with Capsule's tenant label, which MakeTenant's
// selector matches.
func (b *NamespaceBuilder) Tenant(tenant string) *NamespaceBuilder {
	return b.Label(tenancyv1.LabelCapsuleTenant, tenant)
}

// Label sets a label.
func (b *NamespaceBuilder) Label(key, value string) *NamespaceBuilder {
	if b.namespace.Labels == nil {
		b.namespace.Labels = map[string]string{}
	}
	b.namespace.Labels[key] = value
	return b
}

// Obj returns the namespace.
func (b *NamespaceBuilder) Obj() *corev1.Namespace {
	return b.namespace.DeepCopy()
}
