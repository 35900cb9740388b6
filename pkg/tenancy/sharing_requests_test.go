package tenancy_test

import (
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/utils/ptr"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

// request is an exact request for one device of class.
func request(name, class string) resourceapi.DeviceRequest {
	return resourceapi.DeviceRequest{Name: name, Exactly: &resourceapi.ExactDeviceRequest{
		DeviceClassName: class, AllocationMode: resourceapi.DeviceAllocationModeExactCount, Count: 1,
	}}
}

// alternatives is a firstAvailable request of one device of each class.
func alternatives(name string, classes ...string) resourceapi.DeviceRequest {
	r := resourceapi.DeviceRequest{Name: name}
	for i, c := range classes {
		r.FirstAvailable = append(r.FirstAvailable, resourceapi.DeviceSubRequest{
			Name: fmt.Sprintf("alt%d", i), DeviceClassName: c, AllocationMode: resourceapi.DeviceAllocationModeExactCount, Count: 1,
		})
	}
	return r
}

// TestSharingRequests: a request for one of Tessera's shared classes becomes
// "own GPUs first, then free ones" (two alternatives differing only in the
// free toleration); everything else keeps its shape and gets both
// tolerations; tolerations already there are not doubled.
func TestSharingRequests(t *testing.T) {
	own, free := tenancy.Toleration("a"), tenancy.Toleration(tenancyv1.GroupFree)
	health := resourceapi.DeviceToleration{Key: "gpu.tessera.dev/unhealthy", Operator: resourceapi.DeviceTolerationOpExists}
	shareReq := func() resourceapi.DeviceRequest {
		r := request("gpu", gpuapi.ClassShared)
		r.Exactly.Selectors = []resourceapi.DeviceSelector{{CEL: &resourceapi.CELDeviceSelector{Expression: "true"}}}
		r.Exactly.Capacity = &resourceapi.CapacityRequirements{Requests: map[resourceapi.QualifiedName]resource.Quantity{gpuapi.CapMemory: resource.MustParse("10Gi")}}
		return r
	}
	sub := func(name string, tols ...resourceapi.DeviceToleration) resourceapi.DeviceSubRequest {
		s := shareReq().Exactly
		return resourceapi.DeviceSubRequest{Name: name, DeviceClassName: s.DeviceClassName, Selectors: s.Selectors,
			AllocationMode: s.AllocationMode, Count: s.Count, Capacity: s.Capacity, Tolerations: tols}
	}
	withTols := func(r resourceapi.DeviceRequest, tols ...resourceapi.DeviceToleration) resourceapi.DeviceRequest {
		r.Exactly.Tolerations = tols
		return r
	}
	dedicated := request("gpu", tenancyv1.DedicatedClassName("a", gpuapi.ClassShared))
	admin := request("gpu", gpuapi.ClassShared)
	admin.Exactly.AdminAccess = ptr.To(true)
	mig := request("mig", gpuapi.ClassMIG)
	alts := alternatives("gpu", gpuapi.ClassMIG, gpuapi.ClassShared)

	for name, tc := range map[string]struct {
		in, want resourceapi.DeviceRequest
	}{
		"a share": {in: shareReq(), want: resourceapi.DeviceRequest{Name: "gpu", FirstAvailable: []resourceapi.DeviceSubRequest{
			sub(tenancyv1.SubrequestOwn, own), sub(tenancyv1.SubrequestAny, own, free),
		}}},
		"a share tolerating health taints keeps them": {in: withTols(shareReq(), health), want: resourceapi.DeviceRequest{Name: "gpu", FirstAvailable: []resourceapi.DeviceSubRequest{
			sub(tenancyv1.SubrequestOwn, health, own), sub(tenancyv1.SubrequestAny, health, own, free),
		}}},
		"a share that already tolerates its group": {in: withTols(shareReq(), own), want: resourceapi.DeviceRequest{Name: "gpu", FirstAvailable: []resourceapi.DeviceSubRequest{
			sub(tenancyv1.SubrequestOwn, own), sub(tenancyv1.SubrequestAny, own, free),
		}}},
		"a share of a dedicated class": {
			in: dedicated,
			want: resourceapi.DeviceRequest{Name: "gpu", FirstAvailable: []resourceapi.DeviceSubRequest{
				{Name: tenancyv1.SubrequestOwn, DeviceClassName: dedicated.Exactly.DeviceClassName, AllocationMode: resourceapi.DeviceAllocationModeExactCount, Count: 1, Tolerations: []resourceapi.DeviceToleration{own}},
				{Name: tenancyv1.SubrequestAny, DeviceClassName: dedicated.Exactly.DeviceClassName, AllocationMode: resourceapi.DeviceAllocationModeExactCount, Count: 1, Tolerations: []resourceapi.DeviceToleration{own, free}},
			}},
		},
		"admin access keeps its shape": {in: admin, want: withTols(*admin.DeepCopy(), own, free)},
		"a MIG request":                {in: mig, want: withTols(*mig.DeepCopy(), own, free)},
		"alternatives get both tolerations each": {in: alts, want: func() resourceapi.DeviceRequest {
			r := *alts.DeepCopy()
			for i := range r.FirstAvailable {
				r.FirstAvailable[i].Tolerations = []resourceapi.DeviceToleration{own, free}
			}
			return r
		}()},
	} {
		t.Run(name, func(t *testing.T) {
			in := *tc.in.DeepCopy()
			got := tenancy.SharingRequests("a", []resourceapi.DeviceRequest{tc.in})
			if diff := cmp.Diff([]resourceapi.DeviceRequest{tc.want}, got); diff != "" {
				t.Errorf("SharingRequests (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(in, tc.in); diff != "" {
				t.Errorf("the input changed (-before +after):\n%s", diff)
			}
			claim := resourceapi.ResourceClaimSpec{Devices: resourceapi.DeviceClaim{Requests: got}}
			a := &tenancyv1.GPUTenant{}
			a.Name = "a"
			a.Spec.AllowedDeviceClasses = []string{gpuapi.ClassShared, gpuapi.ClassMIG, dedicated.Exactly.DeviceClassName}
			a.Spec.AllowAdminAccess = true
			if v := tenancy.ClaimViolations(a, &claim); len(v) != 0 {
				t.Errorf("the tenant's own claims policy refuses the result: %v", v)
			}
		})
	}
}

// TestBlockedByFreeTaint: a waiting claim for a share that the sharing
// policy did not shape blocks the free taint; one it shaped, an allocated
// one and one for a MIG partition do not.
func TestBlockedByFreeTaint(t *testing.T) {
	tolerating := func(r resourceapi.DeviceRequest, tol resourceapi.DeviceToleration) resourceapi.DeviceRequest {
		r = *r.DeepCopy()
		if r.Exactly != nil {
			r.Exactly.Tolerations = append(r.Exactly.Tolerations, tol)
		}
		for i := range r.FirstAvailable {
			r.FirstAvailable[i].Tolerations = append(r.FirstAvailable[i].Tolerations, tol)
		}
		return r
	}
	claim := func(r resourceapi.DeviceRequest) *resourceapi.ResourceClaim {
		return &resourceapi.ResourceClaim{Spec: resourceapi.ResourceClaimSpec{Devices: resourceapi.DeviceClaim{Requests: []resourceapi.DeviceRequest{r}}}}
	}
	share := request("gpu", gpuapi.ClassShared)
	allocated := claim(share)
	allocated.Status.Allocation = &resourceapi.AllocationResult{}
	alts := alternatives("gpu", gpuapi.ClassMIG, gpuapi.ClassShared)
	for name, tc := range map[string]struct {
		claim *resourceapi.ResourceClaim
		want  bool
	}{
		"a share from before the policy":           {claim(share), true},
		"a share the policy shaped":                {claim(tenancy.SharingRequests("a", []resourceapi.DeviceRequest{share})[0]), false},
		"an allocated share":                       {allocated, false},
		"a MIG partition":                          {claim(request("gpu", gpuapi.ClassMIG)), false},
		"alternatives from before the policy":      {claim(alts), true},
		"alternatives the policy gave tolerations": {claim(tenancy.SharingRequests("a", []resourceapi.DeviceRequest{alts})[0]), false},
		// The untenanted policy leaves a claim alone that
		// tolerates another group; it chose to stay off free GPUs.
		"a share tolerating another group":         {claim(tenancy.SharingRequests(tenancyv1.GroupUntenanted, []resourceapi.DeviceRequest{tolerating(share, tenancy.Toleration("team-a"))})[0]), false},
		"a share tolerating a group without a key": {claim(tolerating(share, resourceapi.DeviceToleration{Value: "team-a"})), false},
		"alternatives tolerating another group":    {claim(tolerating(alts, tenancy.Toleration("team-a"))), false},
	} {
		t.Run(name, func(t *testing.T) {
			if got := tenancy.BlockedByFreeTaint(tc.claim); got != tc.want {
				t.Errorf("BlockedByFreeTaint = %v, want %v", got, tc.want)
			}
		})
	}
}
