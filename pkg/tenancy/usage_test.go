package tenancy_test

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

const gi = int64(1) << 30

// slice publishes devices on pool n1 with the given memory (Gi).
func slice(devices map[string]int64) *resourceapi.ResourceSlice {
	s := &resourceapi.ResourceSlice{Spec: resourceapi.ResourceSliceSpec{Driver: gpuapi.DriverName, Pool: resourceapi.ResourcePool{Name: "n1"}}}
	for name, mem := range devices {
		s.Spec.Devices = append(s.Spec.Devices, resourceapi.Device{Name: name, Capacity: map[resourceapi.QualifiedName]resourceapi.DeviceCapacity{
			gpuapi.CapMemory: {Value: *resource.NewQuantity(mem*gi, resource.BinarySI)},
		}})
	}
	return s
}

var published = tenancy.DeviceMemory([]*resourceapi.ResourceSlice{slice(map[string]int64{
	"gpu-0": 141, "gpu-1-shared": 141, "gpu-2-mig-1g18gb-0": 18, "gpu-2-mig-3g71gb-4": 71,
})})

func TestClaimUsage(t *testing.T) {
	for name, tc := range map[string]struct {
		claim   *claimWrapper
		want    tenancy.Usage
		wantErr string
	}{
		"unallocated": {claim: makeClaim("a", "c").Request("gpu", gpuapi.ClassGPU), want: tenancy.Usage{Devices: map[string]int64{}}},
		"whole GPU counts its memory": {
			claim: makeClaim("a", "c").Request("gpu", gpuapi.ClassGPU).Allocated("gpu", "gpu-0"),
			want:  tenancy.Usage{Memory: 141 * gi, Devices: map[string]int64{gpuapi.ClassGPU: 1}},
		},
		"MIG partitions count their profile's memory": {
			claim: makeClaim("a", "c").Request("gpu", gpuapi.ClassMIG).Allocated("gpu", "gpu-2-mig-1g18gb-0").Allocated("gpu", "gpu-2-mig-3g71gb-4"),
			want:  tenancy.Usage{Memory: 89 * gi, Devices: map[string]int64{gpuapi.ClassMIG: 2}},
		},
		"a share counts what it consumes": {
			claim: makeClaim("a", "c").Request("gpu", gpuapi.ClassShared).Share("gpu", "gpu-1-shared", "20Gi", "s1"),
			want:  tenancy.Usage{Memory: 20 * gi, Devices: map[string]int64{gpuapi.ClassShared: 1}},
		},
		"a firstAvailable alternative counts its class": {
			claim: makeClaim("a", "c").FirstAvailable("gpu", gpuapi.ClassGPU, gpuapi.ClassMIG).Allocated("gpu/s1", "gpu-2-mig-1g18gb-0"),
			want:  tenancy.Usage{Memory: 18 * gi, Devices: map[string]int64{gpuapi.ClassMIG: 1}},
		},
		"an unpublished device cannot be costed": {
			claim:   makeClaim("a", "c").Request("gpu", gpuapi.ClassGPU).Allocated("gpu", "gpu-7"),
			wantErr: "device n1/gpu-7 is not published",
		},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := tenancy.ClaimUsage(tc.claim.Obj(), published)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want it to contain %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("usage (-want +got):\n%s", diff)
			}
		})
	}
}

func TestClaimState(t *testing.T) {
	mig := func() *claimWrapper {
		return makeClaim("a", "c").Request("gpu", gpuapi.ClassMIG).Allocated("gpu", "gpu-2-mig-1g18gb-0").Allocated("gpu", "gpu-2-mig-3g71gb-4")
	}
	ungated := makeClaim("a", "c").Request("gpu", gpuapi.ClassMIG).Obj()
	ungated.Status.Allocation = &resourceapi.AllocationResult{Devices: resourceapi.DeviceAllocationResult{Results: []resourceapi.DeviceRequestAllocationResult{{Request: "gpu", Driver: gpuapi.DriverName, Pool: "n1", Device: "gpu-0"}}}}
	for name, tc := range map[string]struct {
		claim *resourceapi.ResourceClaim
		want  tenancy.State
	}{
		"unallocated":           {claim: makeClaim("a", "c").Obj(), want: tenancy.Unallocated},
		"ungated":               {claim: ungated, want: tenancy.Ungated},
		"pending":               {claim: mig().Obj(), want: tenancy.Pending},
		"one of two admitted":   {claim: mig().Condition("gpu-2-mig-1g18gb-0", tenancyv1.ConditionAdmitted).Obj(), want: tenancy.Pending},
		"all admitted":          {claim: mig().Condition("gpu-2-mig-1g18gb-0", tenancyv1.ConditionAdmitted).Condition("gpu-2-mig-3g71gb-4", tenancyv1.ConditionAdmitted).Obj(), want: tenancy.Admitted},
		"one rejected":          {claim: mig().Condition("gpu-2-mig-3g71gb-4", tenancyv1.ConditionRejected).Obj(), want: tenancy.Rejected},
		"share admitted":        {claim: makeClaim("a", "c").Request("gpu", gpuapi.ClassShared).Share("gpu", "gpu-1-shared", "1Gi", "x").Condition("gpu-1-shared", tenancyv1.ConditionAdmitted).Obj(), want: tenancy.Admitted},
		"another share's entry": {claim: otherShareAdmitted(), want: tenancy.Pending},
	} {
		t.Run(name, func(t *testing.T) {
			if got := tenancy.ClaimState(tc.claim); got != tc.want {
				t.Errorf("state = %v, want %v", got, tc.want)
			}
		})
	}
}

// otherShareAdmitted is a share whose status entry names a different share
// of the same device: it must not count as admitted.
func otherShareAdmitted() *resourceapi.ResourceClaim {
	c := makeClaim("a", "c").Request("gpu", gpuapi.ClassShared).Share("gpu", "gpu-1-shared", "1Gi", "x").Condition("gpu-1-shared", tenancyv1.ConditionAdmitted).Obj()
	other := "y"
	c.Status.Devices[0].ShareID = &other
	return c
}

func TestFits(t *testing.T) {
	used := tenancy.Usage{Memory: 380 * gi, Devices: map[string]int64{gpuapi.ClassMIG: 13}}
	for name, tc := range map[string]struct {
		tenant     *tenantWrapper
		add        tenancy.Usage
		want       bool
		wantReason string
	}{
		"no budget": {tenant: makeTenant("t"), add: tenancy.Usage{Memory: 1000 * gi}, want: true},
		"memory exactly to the budget": {
			tenant: makeTenant("t").Memory("400Gi"), add: tenancy.Usage{Memory: 20 * gi}, want: true,
		},
		"memory one byte over": {
			tenant: makeTenant("t").Memory("400Gi"), add: tenancy.Usage{Memory: 20*gi + 1},
			wantReason: "GPUTenant t is over budget: gpuMemory 380Gi in use + 21474836481 requested > budget 400Gi",
		},
		"devices at the limit": {
			tenant: makeTenant("t").Devices(gpuapi.ClassMIG, 14), add: tenancy.Usage{Devices: map[string]int64{gpuapi.ClassMIG: 1}}, want: true,
		},
		"devices and memory over": {
			tenant: makeTenant("t").Memory("390Gi").Devices(gpuapi.ClassMIG, 14), add: tenancy.Usage{Memory: 18 * gi, Devices: map[string]int64{gpuapi.ClassMIG: 2}},
			wantReason: "GPUTenant t is over budget: gpuMemory 380Gi in use + 18Gi requested > budget 390Gi; mig.gpu.tessera.dev devices 13 in use + 2 requested > budget 14",
		},
		"an unbudgeted class": {
			tenant: makeTenant("t").Devices(gpuapi.ClassMIG, 14), add: tenancy.Usage{Devices: map[string]int64{gpuapi.ClassGPU: 5}}, want: true,
		},
		"a claim that holds nothing fits an exhausted budget": {
			tenant: makeTenant("t").Memory("1Gi").Devices(gpuapi.ClassMIG, 0), add: tenancy.Usage{}, want: true,
		},
	} {
		t.Run(name, func(t *testing.T) {
			got, reason := tenancy.Fits(tc.tenant.Obj(), used, tc.add)
			if got != tc.want || reason != tc.wantReason {
				t.Errorf("Fits = %v, %q; want %v, %q", got, reason, tc.want, tc.wantReason)
			}
		})
	}
}

func TestOwners(t *testing.T) {
	ns := func(name string, labels map[string]string) *corev1.Namespace {
		return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	}
	both := makeTenant("both").Obj()
	both.Spec.NamespaceSelector = metav1.LabelSelector{MatchLabels: map[string]string{"shared": "yes"}}
	bad := makeTenant("bad").Obj()
	bad.Spec.NamespaceSelector = metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "x", Operator: "Sometimes"}}}
	empty := makeTenant("empty").Obj()
	empty.Spec.NamespaceSelector = metav1.LabelSelector{}

	owners, err := tenancy.Owners(
		[]*tenancyv1.GPUTenant{makeTenant("team-a").Obj(), makeTenant("team-b").Obj(), both, bad, empty},
		[]*corev1.Namespace{
			ns("a1", map[string]string{tenancyv1.LabelCapsuleTenant: "team-a"}),
			ns("a2", map[string]string{tenancyv1.LabelCapsuleTenant: "team-a", "shared": "yes"}),
			ns("b1", map[string]string{tenancyv1.LabelCapsuleTenant: "team-b"}),
			ns("free", nil),
		})
	want := map[string][]string{"a1": {"team-a"}, "a2": {"both", "team-a"}, "b1": {"team-b"}}
	if diff := cmp.Diff(want, owners); diff != "" {
		t.Errorf("owners (-want +got):\n%s", diff)
	}
	if err == nil || !strings.Contains(err.Error(), "GPUTenant bad") || !strings.Contains(err.Error(), "GPUTenant empty: namespaceSelector selects every namespace") {
		t.Errorf("error = %v, want one naming tenants bad and empty", err)
	}
	own, conflicting := tenancy.TenantNamespaces("team-a", owners)
	if diff := cmp.Diff([]string{"a1"}, own); diff != "" {
		t.Errorf("team-a's own namespaces (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"a2"}, conflicting); diff != "" {
		t.Errorf("team-a's conflicting namespaces (-want +got):\n%s", diff)
	}
}
