package tenancy_test

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

const gi = int64(1) << 30

// slice publishes devices on pool n1, from node n1, with the given memory (Gi).
func slice(devices map[string]int64) *resourceapi.ResourceSlice {
	s := &resourceapi.ResourceSlice{Spec: resourceapi.ResourceSliceSpec{Driver: gpuapi.DriverName, Pool: resourceapi.ResourcePool{Name: "n1"}, NodeName: ptr.To("n1")}}
	for name, mem := range devices {
		s.Spec.Devices = append(s.Spec.Devices, resourceapi.Device{Name: name, Capacity: map[resourceapi.QualifiedName]resourceapi.DeviceCapacity{
			gpuapi.CapMemory: {Value: *resource.NewQuantity(mem*gi, resource.BinarySI)},
		}})
	}
	return s
}

// published is node n1: an H200 (141Gi) whole, two time-shared GPUs (140Gi
// and 80Gi, round numbers for the arithmetic) and two MIG partitions.
var published = tenancy.DeviceMemory([]*resourceapi.ResourceSlice{slice(map[string]int64{
	"gpu-0": 141, "gpu-1-shared": 140, "gpu-3-shared": 80, "gpu-2-mig-1g18gb-0": 18, "gpu-2-mig-3g71gb-4": 71,
})})

// TestCost is the cost rule (docs/tenancy.md, "What an allocation costs"):
// what a tenant's claims cost together, under each sharing policy.
func TestCost(t *testing.T) {
	exclusive, anyTenant := makeTenant("t").Obj(), makeTenant("t").Sharing(tenancyv1.SharingAny).Obj()
	share := func(name, device, memory string, compute int64) *claimWrapper {
		return makeClaim("a", name).Request("gpu", gpuapi.ClassShared).Share("gpu", device, memory, name).Compute(compute)
	}
	shared := func(n int64) map[string]int64 { return map[string]int64{gpuapi.ClassShared: n} }
	for name, tc := range map[string]struct {
		tenant *tenancyv1.GPUTenant
		claims []*claimWrapper
		want   tenancy.Usage
	}{
		"unallocated holds nothing": {
			tenant: exclusive, claims: []*claimWrapper{makeClaim("a", "c").Request("gpu", gpuapi.ClassGPU)},
			want: tenancy.Usage{Devices: map[string]int64{}},
		},
		"whole GPU costs its memory": {
			tenant: exclusive, claims: []*claimWrapper{makeClaim("a", "c").Request("gpu", gpuapi.ClassGPU).Allocated("gpu", "gpu-0")},
			want: tenancy.Usage{Memory: 141 * gi, Devices: map[string]int64{gpuapi.ClassGPU: 1}},
		},
		"MIG partitions cost their profile's memory": {
			tenant: exclusive, claims: []*claimWrapper{makeClaim("a", "c").Request("gpu", gpuapi.ClassMIG).Allocated("gpu", "gpu-2-mig-1g18gb-0").Allocated("gpu", "gpu-2-mig-3g71gb-4")},
			want: tenancy.Usage{Memory: 89 * gi, Devices: map[string]int64{gpuapi.ClassMIG: 2}},
		},
		"a firstAvailable alternative counts its class": {
			tenant: exclusive, claims: []*claimWrapper{makeClaim("a", "c").FirstAvailable("gpu", gpuapi.ClassGPU, gpuapi.ClassMIG).Allocated("gpu/s1", "gpu-2-mig-1g18gb-0")},
			want: tenancy.Usage{Memory: 18 * gi, Devices: map[string]int64{gpuapi.ClassMIG: 1}},
		},
		"another driver's device counts only as a device": {
			tenant: exclusive, claims: []*claimWrapper{makeClaim("a", "c").Request("nic", "nic.example.com").Foreign("nic", "nic.example.com", "eth0")},
			want: tenancy.Usage{Devices: map[string]int64{"nic.example.com": 1}},
		},
		"share, memory dominant (Any)": {
			tenant: anyTenant, claims: []*claimWrapper{share("s1", "gpu-1-shared", "42Gi", 10)},
			want: tenancy.Usage{Memory: 42 * gi, Devices: shared(1)},
		},
		"share, compute dominant (Any)": {
			tenant: anyTenant, claims: []*claimWrapper{share("s1", "gpu-1-shared", "256Mi", 50)},
			want: tenancy.Usage{Memory: 70 * gi, Devices: shared(1)},
		},
		"share under Exclusive costs the whole GPU": {
			tenant: exclusive, claims: []*claimWrapper{share("s1", "gpu-1-shared", "256Mi", 1)},
			want: tenancy.Usage{Memory: 140 * gi, Devices: shared(1)},
		},
		"namespaces of no tenant are one Exclusive group": {
			claims: []*claimWrapper{share("s1", "gpu-1-shared", "256Mi", 1)},
			want:   tenancy.Usage{Memory: 140 * gi, Devices: shared(1)},
		},
		"two shares of one GPU under Exclusive: the GPU once": {
			tenant: exclusive, claims: []*claimWrapper{share("s1", "gpu-1-shared", "10Gi", 10), share("s2", "gpu-1-shared", "20Gi", 10)},
			want: tenancy.Usage{Memory: 140 * gi, Devices: shared(2)},
		},
		"two shares of one GPU under Any: their dominant fractions": {
			tenant: anyTenant, claims: []*claimWrapper{share("s1", "gpu-1-shared", "42Gi", 10), share("s2", "gpu-1-shared", "256Mi", 50)},
			want: tenancy.Usage{Memory: 112 * gi, Devices: shared(2)},
		},
		"shares of one GPU under Any: at most the GPU": {
			tenant: anyTenant, claims: []*claimWrapper{share("s1", "gpu-1-shared", "70Gi", 60), share("s2", "gpu-1-shared", "70Gi", 40)},
			want: tenancy.Usage{Memory: 140 * gi, Devices: shared(2)},
		},
		"shares of two GPUs under Exclusive: each GPU": {
			tenant: exclusive, claims: []*claimWrapper{share("s1", "gpu-1-shared", "1Gi", 1), share("s2", "gpu-3-shared", "1Gi", 1)},
			want: tenancy.Usage{Memory: 220 * gi, Devices: shared(2)},
		},
		"shares of two GPUs under Any: each share's fraction of its GPU": {
			tenant: anyTenant, claims: []*claimWrapper{share("s1", "gpu-1-shared", "256Mi", 50), share("s2", "gpu-3-shared", "256Mi", 25)},
			want: tenancy.Usage{Memory: 90 * gi, Devices: shared(2)},
		},
		"whole GPU beside shares of another": {
			tenant: exclusive, claims: []*claimWrapper{makeClaim("a", "w").Request("gpu", gpuapi.ClassGPU).Allocated("gpu", "gpu-0"), share("s1", "gpu-1-shared", "1Gi", 1)},
			want: tenancy.Usage{Memory: 281 * gi, Devices: map[string]int64{gpuapi.ClassGPU: 1, gpuapi.ClassShared: 1}},
		},
	} {
		t.Run(name, func(t *testing.T) {
			var claims []*resourceapi.ResourceClaim
			for _, c := range tc.claims {
				claims = append(claims, c.Obj())
			}
			held, err := tenancy.HeldBy(claims, published)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, tenancy.Cost(tc.tenant, held)); diff != "" {
				t.Errorf("cost (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDominantMemory(t *testing.T) {
	consumed := func(memory string, compute string) map[resourceapi.QualifiedName]resource.Quantity {
		c := map[resourceapi.QualifiedName]resource.Quantity{}
		if memory != "" {
			c[gpuapi.CapMemory] = resource.MustParse(memory)
		}
		if compute != "" {
			c[gpuapi.CapCompute] = resource.MustParse(compute)
		}
		return c
	}
	for name, tc := range map[string]struct {
		consumed map[resourceapi.QualifiedName]resource.Quantity
		want     int64
	}{
		"memory dominant":          {consumed: consumed("100Gi", "10"), want: 100 * gi},
		"compute dominant":         {consumed: consumed("1Gi", "50"), want: 70*gi + gi/2},
		"rounded up":               {consumed: consumed("256Mi", "1"), want: (141*gi + 99) / 100},
		"no compute: memory":       {consumed: consumed("20Gi", ""), want: 20 * gi},
		"no memory: the whole GPU": {consumed: consumed("", "1"), want: 141 * gi},
		"never more than the GPU":  {consumed: consumed("200Gi", "150"), want: 141 * gi},
	} {
		t.Run(name, func(t *testing.T) {
			if got := tenancy.DominantMemory(tc.consumed, 141*gi); got != tc.want {
				t.Errorf("DominantMemory = %d, want %d", got, tc.want)
			}
		})
	}
}

func TestClaimHoldingsUnknownMemory(t *testing.T) {
	for name, claim := range map[string]*claimWrapper{
		"whole GPU": makeClaim("a", "c").Request("gpu", gpuapi.ClassGPU).Allocated("gpu", "gpu-7"),
		"share":     makeClaim("a", "c").Request("gpu", gpuapi.ClassShared).Share("gpu", "gpu-7-shared", "1Gi", "s"),
	} {
		t.Run(name, func(t *testing.T) {
			_, err := tenancy.ClaimHoldings(claim.Obj(), published)
			if err == nil || !strings.Contains(err.Error(), "is not published, its memory is unknown") {
				t.Fatalf("error = %v, want the device's memory unknown", err)
			}
		})
	}
}

// TestDeviceMemoryTrust: a node's slices set the memory of its own pool's
// devices only, and of a pool only the newest generation counts.
func TestDeviceMemoryTrust(t *testing.T) {
	own := slice(map[string]int64{"gpu-0": 141})
	forged := slice(map[string]int64{"gpu-0": 1, "gpu-9": 1})
	forged.Spec.NodeName = ptr.To("n2") // node n2 publishing into n1's pool
	noNode := slice(map[string]int64{"gpu-8": 1})
	noNode.Spec.NodeName = nil
	noNode.Spec.AllNodes = ptr.To(true)
	old := slice(map[string]int64{"gpu-0": 2, "gpu-1": 80})
	old.Spec.Pool.Generation = -1
	got := tenancy.DeviceMemory([]*resourceapi.ResourceSlice{old, forged, own, noNode})
	want := map[tenancy.DeviceID]int64{{Driver: gpuapi.DriverName, Pool: "n1", Device: "gpu-0"}: 141 * gi}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("memory (-want +got):\n%s", diff)
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
