package tenancy_test

import (
	"time"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
)

// tenantWrapper builds GPUTenants: makeTenant("a").Classes(...).Obj().
type tenantWrapper struct{ tenancyv1.GPUTenant }

func makeTenant(name string) *tenantWrapper {
	return &tenantWrapper{tenancyv1.GPUTenant{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: tenancyv1.GPUTenantSpec{NamespaceSelector: metav1.LabelSelector{
			MatchLabels: map[string]string{tenancyv1.LabelCapsuleTenant: name},
		}},
	}}
}

func (t *tenantWrapper) Classes(c ...string) *tenantWrapper {
	t.Spec.AllowedDeviceClasses = c
	return t
}
func (t *tenantWrapper) AdminAccess() *tenantWrapper  { t.Spec.AllowAdminAccess = true; return t }
func (t *tenantWrapper) DeviceConfig() *tenantWrapper { t.Spec.AllowDeviceConfig = true; return t }
func (t *tenantWrapper) Pool(p string) *tenantWrapper { t.Spec.DedicatedPool = p; return t }
func (t *tenantWrapper) Sharing(s tenancyv1.SharingPolicy) *tenantWrapper {
	t.Spec.Sharing = s
	return t
}
func (t *tenantWrapper) Memory(q string) *tenantWrapper {
	t.budget().GPUMemory = ptr.To(resource.MustParse(q))
	return t
}
func (t *tenantWrapper) Devices(class string, n int64) *tenantWrapper {
	b := t.budget()
	if b.Devices == nil {
		b.Devices = map[string]int64{}
	}
	b.Devices[class] = n
	return t
}
func (t *tenantWrapper) NamespaceQuota(class string, n int64) *tenantWrapper {
	if t.Spec.NamespaceQuota == nil {
		t.Spec.NamespaceQuota = &tenancyv1.NamespaceQuota{Devices: map[string]int64{}}
	}
	t.Spec.NamespaceQuota.Devices[class] = n
	return t
}

// Guarantee sets spec.guarantee.gpuMemory and, for each pair of class and
// count in devices, spec.guarantee.devices.
func (t *tenantWrapper) Guarantee(memory string, devices map[string]int64) *tenantWrapper {
	t.Spec.Guarantee = &tenancyv1.Budget{Devices: devices}
	if memory != "" {
		t.Spec.Guarantee.GPUMemory = ptr.To(resource.MustParse(memory))
	}
	return t
}
func (t *tenantWrapper) budget() *tenancyv1.Budget {
	if t.Spec.Budget == nil {
		t.Spec.Budget = &tenancyv1.Budget{}
	}
	return t.Spec.Budget
}
func (t *tenantWrapper) Obj() *tenancyv1.GPUTenant { return &t.GPUTenant }

// claimWrapper builds ResourceClaims.
type claimWrapper struct{ resourceapi.ResourceClaim }

func makeClaim(ns, name string) *claimWrapper {
	return &claimWrapper{resourceapi.ResourceClaim{ObjectMeta: metav1.ObjectMeta{
		Namespace: ns, Name: name, UID: types.UID(ns + "/" + name),
	}}}
}

// Request adds an exact request for class.
func (c *claimWrapper) Request(name, class string) *claimWrapper {
	c.Spec.Devices.Requests = append(c.Spec.Devices.Requests, resourceapi.DeviceRequest{
		Name: name, Exactly: &resourceapi.ExactDeviceRequest{DeviceClassName: class},
	})
	return c
}

// FirstAvailable adds a request with one alternative per class, named s0, s1, ...
func (c *claimWrapper) FirstAvailable(name string, classes ...string) *claimWrapper {
	r := resourceapi.DeviceRequest{Name: name}
	for i, class := range classes {
		r.FirstAvailable = append(r.FirstAvailable, resourceapi.DeviceSubRequest{Name: "s" + string(rune('0'+i)), DeviceClassName: class})
	}
	c.Spec.Devices.Requests = append(c.Spec.Devices.Requests, r)
	return c
}

func (c *claimWrapper) last() *resourceapi.DeviceRequest {
	return &c.Spec.Devices.Requests[len(c.Spec.Devices.Requests)-1]
}

// AdminAccess asks for admin access in the last request.
func (c *claimWrapper) AdminAccess() *claimWrapper {
	c.last().Exactly.AdminAccess = ptr.To(true)
	return c
}

// Toleration adds a toleration to the last request (its last alternative
// for firstAvailable).
func (c *claimWrapper) Toleration(key string, op resourceapi.DeviceTolerationOperator) *claimWrapper {
	tol := resourceapi.DeviceToleration{Key: key, Operator: op}
	if r := c.last(); r.Exactly != nil {
		r.Exactly.Tolerations = append(r.Exactly.Tolerations, tol)
	} else {
		s := &r.FirstAvailable[len(r.FirstAvailable)-1]
		s.Tolerations = append(s.Tolerations, tol)
	}
	return c
}

// Tolerate adds tol to the last request (or its last alternative).
func (c *claimWrapper) Tolerate(tol resourceapi.DeviceToleration) *claimWrapper {
	if r := c.last(); r.Exactly != nil {
		r.Exactly.Tolerations = append(r.Exactly.Tolerations, tol)
	} else {
		s := &r.FirstAvailable[len(r.FirstAvailable)-1]
		s.Tolerations = append(s.Tolerations, tol)
	}
	return c
}

// Config adds opaque config for driver.
func (c *claimWrapper) Config(driver string) *claimWrapper {
	c.Spec.Devices.Config = append(c.Spec.Devices.Config, resourceapi.DeviceClaimConfiguration{
		DeviceConfiguration: resourceapi.DeviceConfiguration{Opaque: &resourceapi.OpaqueDeviceConfiguration{Driver: driver}},
	})
	return c
}

// Allocated adds an allocation result on pool "n1", gated by the tenancy
// binding conditions.
func (c *claimWrapper) Allocated(request, device string) *claimWrapper {
	return c.allocated(resourceapi.DeviceRequestAllocationResult{Request: request, Driver: gpuapi.DriverName, Pool: "n1", Device: device})
}

// Share adds a gated allocation result of a share consuming memory.
func (c *claimWrapper) Share(request, device, memory, shareID string) *claimWrapper {
	return c.allocated(resourceapi.DeviceRequestAllocationResult{
		Request: request, Driver: gpuapi.DriverName, Pool: "n1", Device: device,
		ShareID:          ptr.To(types.UID(shareID)),
		ConsumedCapacity: map[resourceapi.QualifiedName]resource.Quantity{gpuapi.CapMemory: resource.MustParse(memory)},
	})
}

// Compute sets the consumed compute (percent of SMs) of the last result.
func (c *claimWrapper) Compute(percent int64) *claimWrapper {
	r := &c.Status.Allocation.Devices.Results[len(c.Status.Allocation.Devices.Results)-1]
	r.ConsumedCapacity[gpuapi.CapCompute] = *resource.NewQuantity(percent, resource.DecimalSI)
	return c
}

// Foreign adds an allocation result of another driver's device.
func (c *claimWrapper) Foreign(request, driver, device string) *claimWrapper {
	c.allocated(resourceapi.DeviceRequestAllocationResult{Request: request, Driver: driver, Pool: "n1", Device: device})
	return c
}

func (c *claimWrapper) allocated(r resourceapi.DeviceRequestAllocationResult) *claimWrapper {
	if c.Status.Allocation == nil {
		c.Status.Allocation = &resourceapi.AllocationResult{}
	}
	r.BindingConditions = []string{tenancyv1.ConditionAdmitted}
	r.BindingFailureConditions = []string{tenancyv1.ConditionRejected}
	c.Status.Allocation.Devices.Results = append(c.Status.Allocation.Devices.Results, r)
	return c
}

// Condition sets a condition on the status of the allocated device.
func (c *claimWrapper) Condition(device, condition string) *claimWrapper {
	for _, r := range c.Status.Allocation.Devices.Results {
		if r.Device != device {
			continue
		}
		st := resourceapi.AllocatedDeviceStatus{Driver: r.Driver, Pool: r.Pool, Device: r.Device,
			Conditions: []metav1.Condition{{Type: condition, Status: metav1.ConditionTrue}}}
		if r.ShareID != nil {
			st.ShareID = ptr.To(string(*r.ShareID))
		}
		c.Status.Devices = append(c.Status.Devices, st)
	}
	return c
}

// AdmittedAt sets the admitted condition, at time at, on every allocated
// device.
func (c *claimWrapper) AdmittedAt(at time.Time) *claimWrapper {
	for _, r := range c.Status.Allocation.Devices.Results {
		c.Condition(r.Device, tenancyv1.ConditionAdmitted)
		c.Status.Devices[len(c.Status.Devices)-1].Conditions[0].LastTransitionTime = metav1.NewTime(at)
	}
	return c
}

func (c *claimWrapper) Obj() *resourceapi.ResourceClaim { return &c.ResourceClaim }
