package tenancy_test

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

func shared(device string) tenancy.DeviceID {
	return tenancy.DeviceID{Driver: gpuapi.DriverName, Pool: "n1", Device: device}
}

func TestSharingGroup(t *testing.T) {
	anyTenant := makeTenant("b").Obj()
	anyTenant.Spec.Sharing = tenancyv1.SharingAny
	for name, tc := range map[string]struct {
		tenant *tenancyv1.GPUTenant
		want   string
	}{
		"exclusive by default": {makeTenant("a").Obj(), "a"},
		"any":                  {anyTenant, tenancyv1.GroupAny},
		"no tenant":            {nil, tenancyv1.GroupUntenanted},
	} {
		t.Run(name, func(t *testing.T) {
			if got := tenancy.SharingGroup(tc.tenant); got != tc.want {
				t.Errorf("SharingGroup = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestSharedDevices(t *testing.T) {
	claim := makeClaim("ns", "c").
		Share("r", "gpu-1-shared", "10Gi", "s1").
		Allocated("w", "gpu-0").
		Share("r2", "gpu-0-shared", "10Gi", "s2").
		Share("r3", "gpu-1-shared", "10Gi", "s3").Obj()
	want := []tenancy.DeviceID{shared("gpu-0-shared"), shared("gpu-1-shared")}
	if diff := cmp.Diff(want, tenancy.SharedDevices(claim)); diff != "" {
		t.Errorf("SharedDevices (-want +got):\n%s", diff)
	}
	if got := tenancy.SharedDevices(makeClaim("ns", "u").Obj()); got != nil {
		t.Errorf("unallocated claim holds %v", got)
	}
}

func TestSharingConflict(t *testing.T) {
	holders := tenancy.Holders([]tenancy.ShareHolder{
		{Claim: types.NamespacedName{Namespace: "a1", Name: "x"}, Group: "a", Devices: []tenancy.DeviceID{shared("gpu-0-shared")}},
		{Claim: types.NamespacedName{Namespace: "a2", Name: "y"}, Group: "a", Devices: []tenancy.DeviceID{shared("gpu-0-shared")}},
		{Claim: types.NamespacedName{Namespace: "u", Name: "z"}, Group: tenancyv1.GroupUntenanted, Devices: []tenancy.DeviceID{shared("gpu-1-shared")}},
	})
	for name, tc := range map[string]struct {
		group    string
		claim    *resourceapi.ResourceClaim
		conflict bool
	}{
		"own tenant's GPU":      {"a", makeClaim("a1", "n").Share("r", "gpu-0-shared", "1Gi", "s").Obj(), false},
		"fresh GPU":             {"b", makeClaim("b1", "n").Share("r", "gpu-2-shared", "1Gi", "s").Obj(), false},
		"other tenant's GPU":    {"b", makeClaim("b1", "n").Share("r", "gpu-0-shared", "1Gi", "s").Obj(), true},
		"untenanted GPU":        {"a", makeClaim("a1", "n").Share("r", "gpu-1-shared", "1Gi", "s").Obj(), true},
		"untenanted beside a":   {tenancyv1.GroupUntenanted, makeClaim("u", "n").Share("r", "gpu-0-shared", "1Gi", "s").Obj(), true},
		"one of two shares bad": {"b", makeClaim("b1", "n").Share("r", "gpu-2-shared", "1Gi", "s").Share("q", "gpu-0-shared", "1Gi", "t").Obj(), true},
		"whole GPU is no share": {"b", makeClaim("b1", "n").Allocated("r", "gpu-0").Obj(), false},
		"untenanted on its own": {tenancyv1.GroupUntenanted, makeClaim("u", "n").Share("r", "gpu-1-shared", "1Gi", "s").Obj(), false},
	} {
		t.Run(name, func(t *testing.T) {
			msg := tenancy.SharingConflict(tc.group, tc.claim, holders)
			if (msg != "") != tc.conflict {
				t.Fatalf("SharingConflict = %q, want conflict %v", msg, tc.conflict)
			}
			if tc.conflict && (strings.Contains(msg, "\"a\"") || strings.Contains(msg, tenancyv1.GroupUntenanted)) {
				t.Errorf("message %q names the holding group", msg)
			}
			// Nor where the other tenant runs.
			if tc.conflict && (strings.Contains(msg, "gpu-") || strings.Contains(msg, "n1")) {
				t.Errorf("message %q names the GPU or its node", msg)
			}
		})
	}
}

func TestTaintRules(t *testing.T) {
	holders := tenancy.Holders([]tenancy.ShareHolder{
		{Group: "a", Devices: []tenancy.DeviceID{shared("gpu-0-shared")}},
		{Group: "b", Devices: []tenancy.DeviceID{shared("gpu-1-shared"), shared("gpu-2-shared")}},
		{Group: "a", Devices: []tenancy.DeviceID{shared("gpu-2-shared")}},
	})
	type rule struct{ name, device, value string }
	var got []rule
	all := []tenancy.DeviceID{shared("gpu-0-shared"), shared("gpu-1-shared"), shared("gpu-2-shared"), shared("gpu-3-shared")}
	for _, r := range tenancy.TaintRules(all, holders) {
		if r.Spec.Taint.Key != tenancyv1.TaintKeyTenant || r.Spec.Taint.Effect != resourceapi.DeviceTaintEffectNoSchedule {
			t.Errorf("rule %s has taint %+v", r.Name, r.Spec.Taint)
		}
		if *r.Spec.DeviceSelector.Driver != gpuapi.DriverName || *r.Spec.DeviceSelector.Pool != "n1" {
			t.Errorf("rule %s selects %+v", r.Name, r.Spec.DeviceSelector)
		}
		got = append(got, rule{r.Name, *r.Spec.DeviceSelector.Device, r.Spec.Taint.Value})
	}
	want := []rule{
		{"gpu-0-shared.n1.sharing.tenancy.tessera.dev", "gpu-0-shared", "a"},
		{"gpu-1-shared.n1.sharing.tenancy.tessera.dev", "gpu-1-shared", "b"},
		{"gpu-2-shared.n1.sharing.tenancy.tessera.dev", "gpu-2-shared", tenancyv1.GroupConflict},
		{"gpu-3-shared.n1.sharing.tenancy.tessera.dev", "gpu-3-shared", tenancyv1.GroupFree},
	}
	if diff := cmp.Diff(want, got, cmp.AllowUnexported(rule{})); diff != "" {
		t.Errorf("TaintRules (-want +got):\n%s", diff)
	}
	if got := tenancy.TaintRules(nil, tenancy.Holders(nil)); len(got) != 0 {
		t.Errorf("no GPUs, no holders, rules %v", got)
	}
}

// TestEntitledToleration: a tenant's claims may carry exactly their group's
// toleration and the free GPUs' one, which the sharing policy adds; every
// other tenancy toleration is still refused, by the same check the admission
// policy makes.
func TestEntitledToleration(t *testing.T) {
	a := makeTenant("a").Classes(gpuapi.ClassShared).Obj()
	anyTenant := makeTenant("b").Classes(gpuapi.ClassShared).Obj()
	anyTenant.Spec.Sharing = tenancyv1.SharingAny
	own := tenancy.Toleration("a")
	for name, tc := range map[string]struct {
		tenant  *tenancyv1.GPUTenant
		tol     resourceapi.DeviceToleration
		allowed bool
	}{
		"own group":            {a, own, true},
		"free GPUs":            {a, tenancy.Toleration(tenancyv1.GroupFree), true},
		"any group for Any":    {anyTenant, tenancy.Toleration(tenancyv1.GroupAny), true},
		"any group, exclusive": {a, tenancy.Toleration(tenancyv1.GroupAny), false},
		"other tenant":         {a, tenancy.Toleration("b"), false},
		"untenanted group":     {a, tenancy.Toleration(tenancyv1.GroupUntenanted), false},
		"conflict group":       {a, tenancy.Toleration(tenancyv1.GroupConflict), false},
		"exists on the key":    {a, resourceapi.DeviceToleration{Key: own.Key, Operator: resourceapi.DeviceTolerationOpExists, Effect: own.Effect}, false},
		"any effect":           {a, resourceapi.DeviceToleration{Key: own.Key, Operator: own.Operator, Value: own.Value}, false},
		"everything":           {a, resourceapi.DeviceToleration{Operator: resourceapi.DeviceTolerationOpExists}, false},
	} {
		t.Run(name, func(t *testing.T) {
			claim := makeClaim("ns", "c").Request("r", gpuapi.ClassShared).Obj()
			claim.Spec.Devices.Requests[0].Exactly.Tolerations = []resourceapi.DeviceToleration{tc.tol}
			v := tenancy.ClaimViolations(tc.tenant, &claim.Spec)
			if (len(v) == 0) != tc.allowed {
				t.Errorf("violations %v, want allowed %v", v, tc.allowed)
			}
		})
	}
}

func TestUntenantedSharingBinding(t *testing.T) {
	b := tenancy.UntenantedSharingBinding([]string{"b", "a", "b"})
	if b.Spec.PolicyName != tenancyv1.PolicySharingUntenanted {
		t.Errorf("binds %s", b.Spec.PolicyName)
	}
	want := []string{"a", "b"}
	if diff := cmp.Diff(want, b.Spec.MatchResources.NamespaceSelector.MatchExpressions[0].Values); diff != "" {
		t.Errorf("excluded namespaces (-want +got):\n%s", diff)
	}
}

func TestTaintGroups(t *testing.T) {
	held := []tenancy.ShareHolder{{Group: "a", Devices: []tenancy.DeviceID{shared("gpu-0-shared")}}}
	pending := []tenancy.ShareHolder{
		{Group: "b", Devices: []tenancy.DeviceID{shared("gpu-0-shared"), shared("gpu-1-shared")}},
		{Group: "a", Devices: []tenancy.DeviceID{shared("gpu-2-shared")}},
		{Group: "b", Devices: []tenancy.DeviceID{shared("gpu-2-shared")}},
	}
	want := map[tenancy.DeviceID][]string{
		shared("gpu-0-shared"): {"a"}, // held by a; b's pending share will be rejected
		shared("gpu-1-shared"): {"b"}, // pending of one group only
		// gpu-2-shared: pending of two groups, undecided: no taint
	}
	if diff := cmp.Diff(want, tenancy.TaintGroups(held, pending)); diff != "" {
		t.Errorf("TaintGroups (-want +got):\n%s", diff)
	}
}

// TestSharedGPUsWithWithdrawn: a shared GPU that its node's plugin has
// withdrawn (its GPU is whole or partitioned for now) keeps its rule while
// the node still publishes its pool; rules of a pool no longer published, of
// another driver or of no device name no GPU.
func TestSharedGPUsWithWithdrawn(t *testing.T) {
	slice := func(pool string, devices ...resourceapi.Device) resourceapi.ResourceSlice {
		return resourceapi.ResourceSlice{Spec: resourceapi.ResourceSliceSpec{
			Driver: gpuapi.DriverName, Pool: resourceapi.ResourcePool{Name: pool}, Devices: devices,
		}}
	}
	yes := true
	published := []resourceapi.ResourceSlice{
		// n1: GPU 0 time-shared, GPU 1 whole (its shared device withdrawn).
		slice("n1", resourceapi.Device{Name: "gpu-0"}, resourceapi.Device{Name: "gpu-0-shared", AllowMultipleAllocations: &yes}),
		slice("n1", resourceapi.Device{Name: "gpu-1"}),
		{Spec: resourceapi.ResourceSliceSpec{Driver: "other.example.com", Pool: resourceapi.ResourcePool{Name: "n3"}}},
	}
	rule := func(driver, pool, device string) resourceapi.DeviceTaintRule {
		return resourceapi.DeviceTaintRule{Spec: resourceapi.DeviceTaintRuleSpec{
			DeviceSelector: &resourceapi.DeviceTaintSelector{Driver: &driver, Pool: &pool, Device: &device},
		}}
	}
	rules := []resourceapi.DeviceTaintRule{
		rule(gpuapi.DriverName, "n1", "gpu-0-shared"),
		rule(gpuapi.DriverName, "n1", "gpu-1-shared"),
		rule(gpuapi.DriverName, "n2", "gpu-0-shared"),   // n2 is gone
		rule("other.example.com", "n3", "gpu-0-shared"), // not Tessera's
		rule(gpuapi.DriverName, "n1", ""),               // names no device
		{Spec: resourceapi.DeviceTaintRuleSpec{}},       // selects nothing
	}
	want := []tenancy.DeviceID{shared("gpu-0-shared"), shared("gpu-1-shared")}
	if diff := cmp.Diff(want, tenancy.SharedGPUsWithWithdrawn(published, rules)); diff != "" {
		t.Errorf("SharedGPUsWithWithdrawn (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(want[:1], tenancy.SharedGPUs(published)); diff != "" {
		t.Errorf("SharedGPUs (-want +got):\n%s", diff)
	}
}
