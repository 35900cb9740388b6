package scheduling

import (
	"context"
	"testing"

	resourceapi "k8s.io/api/resource/v1"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

// extendedResourceClaim is the claim kube-scheduler 1.37 builds in memory for
// a container asking for one device of class through DRA's extended resource
// (createResourceRequestAndMappings in the dynamicresources plugin): one
// exact request of the class, count 1, and nothing else: no capacity, no
// tolerations.
func extendedResourceClaim(class string) *resourceapi.ResourceClaim {
	return newClaim(resourceapi.DeviceRequest{Name: "container-0-request-0", Exactly: &resourceapi.ExactDeviceRequest{
		DeviceClassName: class, AllocationMode: resourceapi.DeviceAllocationModeExactCount, Count: 1,
	}})
}

// TestExtendedResourceShareBlockedBySharingTaint: on a node whose time-shared
// GPUs carry the tenancy controller's sharing taint (sharing.free when no
// group holds them), the upstream allocator gives the scheduler's
// extended-resource claim for a share nothing, because that claim tolerates
// no taint; the same request with the tolerations the sharing policies add
// to an API claim is allocated, and so is the extended-resource claim on the
// untainted slices. A whole GPU carries no sharing taint, and its
// extended-resource claim is allocated.
func TestExtendedResourceShareBlockedBySharingTaint(t *testing.T) {
	ctx := context.Background()
	c := newTenantCluster(t, 1, exclusive)
	c.Slices = tainted(c.base, tenancy.TaintRules(c.sharedGPUs, nil))

	if result, err := c.Allocate(ctx, extendedResourceClaim(gpuapi.ClassShared)); err != nil || result != nil {
		t.Fatalf("extended-resource share on free-tainted GPUs: allocated %v (err %v), want nothing", result, err)
	}
	tolerated := extendedResourceClaim(gpuapi.ClassShared)
	tolerated.Spec.Devices.Requests = tenancy.SharingRequests("a", tolerated.Spec.Devices.Requests)
	if result, err := c.Allocate(ctx, tolerated); err != nil || result == nil {
		t.Fatalf("the same share with the sharing policies' tolerations: allocated %v (err %v), want a share", result, err)
	}
	if result, err := c.Allocate(ctx, extendedResourceClaim(gpuapi.ClassGPU)); err != nil || result == nil {
		t.Fatalf("extended-resource whole GPU: allocated %v (err %v), want a GPU", result, err)
	}

	untainted := newTenantCluster(t, 1, exclusive)
	if result, err := untainted.Allocate(ctx, extendedResourceClaim(gpuapi.ClassShared)); err != nil || result == nil {
		t.Fatalf("extended-resource share without the sharing taint: allocated %v (err %v), want a share", result, err)
	}
}
