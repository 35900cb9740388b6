package tenancy_test

import (
	"testing"

	resourceapi "k8s.io/api/resource/v1"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

// extendedResourceClaim is the claim kube-scheduler makes for a pod whose
// first container asks for n of the DeviceClass's extended resource
// (deviceclass.resource.kubernetes.io/<class>, which every class serves, or
// the class's spec.extendedResourceName): annotated, one request per
// container and resource, ExactCount n of the class, no capacity requested.
func extendedResourceClaim(class string, n int64) *claimWrapper {
	c := makeClaim("a", "pod-extended-resources-x")
	c.Annotations = map[string]string{resourceapi.ExtendedResourceClaimAnnotation: "true"}
	c.Spec.Devices.Requests = []resourceapi.DeviceRequest{{Name: "container-0-request-0", Exactly: &resourceapi.ExactDeviceRequest{
		DeviceClassName: class, AllocationMode: resourceapi.DeviceAllocationModeExactCount, Count: n,
	}}}
	return c
}

// TestExtendedResourceClaimsAreCharged: a pod's extended-resource request
// for a shared class becomes a claim whose shares the scheduler allocates
// with the request policy's defaults (1Gi, 10 % of compute); the binding
// check charges it like any claim of the class: each share a device of the
// class, and the GPU held for an Exclusive tenant. A budget of one shared
// device or of less than the GPU refuses it.
func TestExtendedResourceClaimsAreCharged(t *testing.T) {
	claim := extendedResourceClaim(gpuapi.ClassShared, 2).
		Share("container-0-request-0", "gpu-1-shared", "1Gi", "s1").Compute(10).
		Share("container-0-request-0", "gpu-1-shared", "1Gi", "s2").Compute(10).Obj()
	for name, tc := range map[string]struct {
		tenant *tenantWrapper
		admit  bool
	}{
		"within the budget":              {tenant: makeTenant("t").Classes(gpuapi.ClassShared).Memory("140Gi").Devices(gpuapi.ClassShared, 2), admit: true},
		"one shared device budgeted":     {tenant: makeTenant("t").Classes(gpuapi.ClassShared).Devices(gpuapi.ClassShared, 1)},
		"less memory than the GPU":       {tenant: makeTenant("t").Classes(gpuapi.ClassShared).Memory("100Gi")},
		"a class the tenant may not use": {tenant: makeTenant("t").Classes(gpuapi.ClassMIG)},
	} {
		t.Run(name, func(t *testing.T) {
			d := tenancy.Decide(tc.tenant.Obj(), nil, claim, published)
			if d.Admit != tc.admit {
				t.Errorf("admit = %v, want %v (%s)", d.Admit, tc.admit, d.Message)
			}
			if got := d.Cost.Devices[gpuapi.ClassShared]; tc.admit && got != 2 {
				t.Errorf("charged %d shared devices, want 2", got)
			}
			if tc.admit && d.Cost.Memory != 140*gi {
				t.Errorf("charged %d bytes, want the GPU's 140Gi", d.Cost.Memory)
			}
		})
	}
}
