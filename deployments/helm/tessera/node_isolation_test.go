package tessera

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apiserver/pkg/admission"
	"k8s.io/apiserver/pkg/authentication/user"

	"github.com/tessera-gpu/tessera/internal/testing/builder"
)

const pluginUser = "system:serviceaccount:tessera-system:tessera-kubelet-plugin"

// pluginPolicy renders the chart with args and returns the plugin's policy
// whose name ends in suffix, checking that it fails closed and that a binding
// denies with it.
func pluginPolicy(t *testing.T, suffix string, args ...string) *admissionv1.ValidatingAdmissionPolicy {
	t.Helper()
	manifest, err := render(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	objs := objects(t, manifest)
	var policy *admissionv1.ValidatingAdmissionPolicy
	for _, p := range find[*admissionv1.ValidatingAdmissionPolicy](objs) {
		if p.Name == "tessera-kubelet-plugin"+suffix {
			policy = p
		}
	}
	if policy == nil {
		t.Fatalf("the chart renders no ValidatingAdmissionPolicy tessera-kubelet-plugin%s", suffix)
	}
	if policy.Spec.FailurePolicy == nil || *policy.Spec.FailurePolicy != admissionv1.Fail {
		t.Errorf("policy %s must fail closed", policy.Name)
	}
	var bound bool
	for _, b := range find[*admissionv1.ValidatingAdmissionPolicyBinding](objs) {
		for _, a := range b.Spec.ValidationActions {
			bound = bound || b.Spec.PolicyName == policy.Name && a == admissionv1.Deny
		}
	}
	if !bound {
		t.Errorf("policy %s has no binding that denies", policy.Name)
	}
	return policy
}

var slicesGVR = resourceapi.SchemeGroupVersion.WithResource("resourceslices")

// sliceVerdict is what a policy said of one slice request: "not matched",
// "allowed", or the denials joined.
func sliceVerdict(t *testing.T, policy *admissionv1.ValidatingAdmissionPolicy, u user.Info, op admission.Operation, obj, old *resourceapi.ResourceSlice) string {
	t.Helper()
	var o, oo runtime.Object
	if obj != nil {
		o = obj
	}
	if old != nil {
		oo = old
	}
	matched, denials := admitsUser(t, policy, u, op, slicesGVR, "ResourceSlice", o, oo)
	switch {
	case !matched:
		return "not matched"
	case len(denials) == 0:
		return "allowed"
	}
	return strings.Join(denials, "; ")
}

// TestSlicePublishersPolicy: only the plugin's ServiceAccount (and cluster
// administrators) create or change gpu.tessera.dev slices; the kubelet's own
// credentials, which NodeRestriction lets create slices of their node, are
// refused, and other drivers' slices are none of the policy's business.
func TestSlicePublishersPolicy(t *testing.T) {
	policy := pluginPolicy(t, "-slice-publishers")
	kubelet := &user.DefaultInfo{Name: "system:node:n1", Groups: []string{"system:nodes", "system:authenticated"}}
	plugin := &user.DefaultInfo{Name: pluginUser, Groups: []string{"system:serviceaccounts"},
		Extra: map[string][]string{"authentication.kubernetes.io/node-name": {"n1"}}}
	admin := &user.DefaultInfo{Name: "tessera-admin", Groups: []string{"system:masters"}}
	other := &user.DefaultInfo{Name: "system:serviceaccount:kube-system:other-driver"}
	tessera := builder.MakeSlice("s", "n1").Device(builder.MakeDevice("gpu-0").Gated().Obj()).Obj()
	foreign := builder.MakeSlice("s", "n1").Driver("gpu.nvidia.com").Device(builder.MakeDevice("gpu-0").Obj()).Obj()
	refused := "are published only by Tessera's kubelet plugin"
	for name, tc := range map[string]struct {
		u        user.Info
		op       admission.Operation
		obj, old *resourceapi.ResourceSlice
		want     string
	}{
		"kubelet creates a Tessera slice of its node": {kubelet, admission.Create, tessera, nil, refused},
		"kubelet updates a Tessera slice of its node": {kubelet, admission.Update, tessera, tessera, refused},
		"kubelet turns a Tessera slice into another":  {kubelet, admission.Update, foreign, tessera, refused},
		"another account creates a Tessera slice":     {other, admission.Create, tessera, nil, refused},
		"the plugin creates a Tessera slice":          {plugin, admission.Create, tessera, nil, "allowed"},
		"the plugin updates a Tessera slice":          {plugin, admission.Update, tessera, tessera, "allowed"},
		"a cluster administrator creates one":         {admin, admission.Create, tessera, nil, "not matched"},
		"kubelet creates another driver's slice":      {kubelet, admission.Create, foreign, nil, "not matched"},
		"another driver updates its own slice":        {other, admission.Update, foreign, foreign, "not matched"},
	} {
		t.Run(name, func(t *testing.T) {
			got := sliceVerdict(t, policy, tc.u, tc.op, tc.obj, tc.old)
			if !strings.Contains(got, tc.want) {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
	for _, op := range policy.Spec.MatchConstraints.ResourceRules[0].Operations {
		if op == admissionv1.Delete {
			t.Error("the policy matches deletes: the kubelet and the garbage collector delete slices of nodes and plugins that are gone")
		}
	}
}

// TestNodeIsolationRequiresBindingConditions: with tenancy on (the default),
// the plugin may publish a device only with both tenancy binding conditions,
// so no device of a node is bound past the controller's budget and sharing
// checks; with tenancy off, devices carry none.
func TestNodeIsolationRequiresBindingConditions(t *testing.T) {
	plugin := &user.DefaultInfo{Name: pluginUser, Extra: map[string][]string{"authentication.kubernetes.io/node-name": {"n1"}}}
	gated := builder.MakeDevice("gpu-0").Gated().Obj()
	bare := builder.MakeDevice("gpu-1").Obj()
	admittedOnly := builder.MakeDevice("gpu-2").Gated().Obj()
	admittedOnly.BindingFailureConditions = nil
	slice := func(devices ...resourceapi.Device) *resourceapi.ResourceSlice {
		return builder.MakeSlice("s", "n1").Device(devices...).Obj()
	}
	counters := builder.MakeSlice("s", "n1").Counters(resourceapi.CounterSet{Name: "gpu-0"}).Obj()
	refused := "the kubelet plugin of node n1 must publish every device with the binding conditions"
	for name, tc := range map[string]struct {
		tenancy  bool
		op       admission.Operation
		obj, old *resourceapi.ResourceSlice
		want     []string
	}{
		"gated devices":                       {true, admission.Create, slice(gated), nil, nil},
		"a device without binding conditions": {true, admission.Create, slice(gated, bare), nil, []string{refused}},
		"a device without the failure one":    {true, admission.Create, slice(admittedOnly), nil, []string{refused}},
		"an update that drops them":           {true, admission.Update, slice(bare), slice(gated), []string{refused}},
		"a counter slice":                     {true, admission.Create, counters, nil, nil},
		"deleting an old slice without them":  {true, admission.Delete, nil, slice(bare), nil},
		"tenancy off, no binding conditions":  {false, admission.Create, slice(bare), nil, nil},
	} {
		t.Run(name, func(t *testing.T) {
			policy := pluginPolicy(t, "-node-isolation", "--set", "kubeletPlugin.tenancy="+map[bool]string{true: "true", false: "false"}[tc.tenancy])
			var o, oo runtime.Object
			if tc.obj != nil {
				o = tc.obj
			}
			if tc.old != nil {
				oo = tc.old
			}
			matched, denials := admitsUser(t, policy, plugin, tc.op, slicesGVR, "ResourceSlice", o, oo)
			if !matched {
				t.Fatal("the node-isolation policy does not match the plugin's request")
			}
			var got []string
			for _, d := range denials {
				if strings.Contains(d, "binding conditions") {
					got = append(got, refused)
				}
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("denials (-want +got):\n%s\nall: %v", diff, denials)
			}
		})
	}
}
