package tessera

import (
	"context"
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apiserver/pkg/admission"
	plugincel "k8s.io/apiserver/pkg/admission/plugin/cel"
	"k8s.io/apiserver/pkg/admission/plugin/policy/mutating/patch"
	"k8s.io/apiserver/pkg/admission/plugin/policy/validating"
	celconfig "k8s.io/apiserver/pkg/apis/cel"
	"k8s.io/apiserver/pkg/cel/environment"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/utils/ptr"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

// mutate runs the JSONPatch mutations of policy on claim, created in
// namespace ns with param as the policy's parameter, with the API server's
// own admission-policy compiler and patcher (the code
// k8s.io/apiserver/pkg/admission/plugin/policy/mutating runs).
func mutate(t *testing.T, policy *admissionv1.MutatingAdmissionPolicy, claim *resourceapi.ResourceClaim, ns *corev1.Namespace, param runtime.Object) *resourceapi.ResourceClaim {
	t.Helper()
	compiler, err := plugincel.NewCompositedCompiler(environment.MustBaseEnvSet(environment.DefaultCompatibilityVersion()))
	if err != nil {
		t.Fatal(err)
	}
	opts := plugincel.OptionalVariableDeclarations{HasParams: policy.Spec.ParamKind != nil}
	var variables []plugincel.NamedExpressionAccessor
	for _, v := range policy.Spec.Variables {
		variables = append(variables, &validating.Variable{Name: v.Name, Expression: v.Expression})
	}
	compiler.CompileAndStoreVariables(variables, opts, environment.StoredExpressions)
	opts.HasPatchTypes = true
	gvk := resourceapi.SchemeGroupVersion.WithKind("ResourceClaim")
	gvr := resourceapi.SchemeGroupVersion.WithResource("resourceclaims")
	out := claim.DeepCopy()
	for _, m := range policy.Spec.Mutations {
		if m.PatchType != admissionv1.PatchTypeJSONPatch {
			t.Fatalf("policy %s: mutation of type %s", policy.Name, m.PatchType)
		}
		patcher := patch.NewJSONPatcher(compiler.CompileMutatingEvaluator(&patch.JSONPatchCondition{Expression: m.JSONPatch.Expression}, opts, environment.StoredExpressions))
		attrs := admission.NewAttributesRecord(out, nil, gvk, out.Namespace, out.Name, gvr, "", admission.Create, &metav1.CreateOptions{}, false, nil)
		// As the API server's dispatcher does: a context per invocation that
		// evaluates the policy's variables.
		ctx := compiler.CreateContext(context.Background())
		got, err := patcher.Patch(ctx, patch.Request{
			MatchedResource:     gvr,
			VersionedAttributes: &admission.VersionedAttributes{Attributes: attrs, VersionedKind: gvk, VersionedObject: admission.NewLazyObject(out)},
			ObjectInterfaces:    admission.NewObjectInterfacesFromScheme(scheme.Scheme),
			OptionalVariables:   plugincel.OptionalVariableBindings{VersionedParams: param},
			Namespace:           ns,
		}, celconfig.RuntimeCELCostBudget)
		if err != nil {
			t.Fatalf("policy %s on claim %s: %v", policy.Name, claim.Name, err)
		}
		out = got.(*resourceapi.ResourceClaim)
	}
	return out
}

// TestSharingPoliciesMatchTheirGoTwin: the chart's two sharing policies,
// compiled and applied by the API server's admission-policy code, shape every
// kind of claim exactly as tenancy.SharingRequests says, for an exclusive
// tenant, an Any tenant and a namespace of no tenant; a tenant's policy
// leaves the claims of namespaces it does not select alone; and the result
// passes the tenant's claims policy (its Go twin).
func TestSharingPoliciesMatchTheirGoTwin(t *testing.T) {
	manifest, err := render(t)
	if err != nil {
		t.Fatal(err)
	}
	policies := map[string]*admissionv1.MutatingAdmissionPolicy{}
	for _, p := range find[*admissionv1.MutatingAdmissionPolicy](objects(t, manifest)) {
		policies[p.Name] = p
	}
	tenantPolicy, untenantedPolicy := policies[tenancyv1.PolicySharing], policies[tenancyv1.PolicySharingUntenanted]
	if tenantPolicy == nil || untenantedPolicy == nil {
		t.Fatalf("the chart renders the MutatingAdmissionPolicies %v, want %s and %s", policies, tenancyv1.PolicySharing, tenancyv1.PolicySharingUntenanted)
	}

	exact := func(name, class string) resourceapi.DeviceRequest {
		return resourceapi.DeviceRequest{Name: name, Exactly: &resourceapi.ExactDeviceRequest{
			DeviceClassName: class, AllocationMode: resourceapi.DeviceAllocationModeExactCount, Count: 1,
		}}
	}
	share := exact("gpu", gpuapi.ClassShared)
	share.Exactly.Capacity = &resourceapi.CapacityRequirements{Requests: map[resourceapi.QualifiedName]resource.Quantity{gpuapi.CapMemory: resource.MustParse("10Gi")}}
	share.Exactly.Selectors = []resourceapi.DeviceSelector{{CEL: &resourceapi.CELDeviceSelector{Expression: `device.attributes["gpu.tessera.dev"].index == 0`}}}
	tolerating := func(r resourceapi.DeviceRequest, tols ...resourceapi.DeviceToleration) resourceapi.DeviceRequest {
		r = *r.DeepCopy()
		r.Exactly.Tolerations = tols
		return r
	}
	admin := exact("gpu", gpuapi.ClassShared)
	admin.Exactly.AdminAccess = ptr.To(true)
	notAdmin := exact("gpu", gpuapi.ClassShared)
	notAdmin.Exactly.AdminAccess = ptr.To(false)
	alternatives := resourceapi.DeviceRequest{Name: "gpu", FirstAvailable: []resourceapi.DeviceSubRequest{
		{Name: "mig", DeviceClassName: gpuapi.ClassMIG, AllocationMode: resourceapi.DeviceAllocationModeExactCount, Count: 1},
		{Name: "share", DeviceClassName: gpuapi.ClassShared, AllocationMode: resourceapi.DeviceAllocationModeExactCount, Count: 1,
			Tolerations: []resourceapi.DeviceToleration{tenancy.Toleration(tenancyv1.GroupFree)}},
	}}
	health := resourceapi.DeviceToleration{Key: "gpu.tessera.dev/unhealthy", Operator: resourceapi.DeviceTolerationOpExists, Effect: resourceapi.DeviceTaintEffectNoSchedule}
	// Each claim as its creator wrote it, for a claim of group.
	claims := map[string]func(group string) []resourceapi.DeviceRequest{
		"a share": func(string) []resourceapi.DeviceRequest { return []resourceapi.DeviceRequest{share} },
		"a share tolerating a health taint": func(string) []resourceapi.DeviceRequest {
			return []resourceapi.DeviceRequest{tolerating(share, health)}
		},
		"a share with both its tolerations": func(g string) []resourceapi.DeviceRequest {
			return []resourceapi.DeviceRequest{tolerating(share, tenancy.Toleration(g), tenancy.Toleration(tenancyv1.GroupFree))}
		},
		"a dedicated share": func(string) []resourceapi.DeviceRequest {
			return []resourceapi.DeviceRequest{exact("gpu", tenancyv1.DedicatedClassName("team-a", gpuapi.ClassShared))}
		},
		"admin access":       func(string) []resourceapi.DeviceRequest { return []resourceapi.DeviceRequest{admin} },
		"admin access false": func(string) []resourceapi.DeviceRequest { return []resourceapi.DeviceRequest{notAdmin} },
		"a MIG partition and a share": func(string) []resourceapi.DeviceRequest {
			return []resourceapi.DeviceRequest{exact("mig", gpuapi.ClassMIG), exact("share", gpuapi.ClassShared)}
		},
		"alternatives": func(string) []resourceapi.DeviceRequest { return []resourceapi.DeviceRequest{alternatives} },
		"no devices":   func(string) []resourceapi.DeviceRequest { return nil },
	}

	exclusive := &tenancyv1.GPUTenant{
		TypeMeta:   metav1.TypeMeta{APIVersion: tenancyv1.SchemeGroupVersion.String(), Kind: "GPUTenant"},
		ObjectMeta: metav1.ObjectMeta{Name: "team-a"},
		Spec: tenancyv1.GPUTenantSpec{
			NamespaceSelector:    metav1.LabelSelector{MatchLabels: map[string]string{tenancyv1.LabelCapsuleTenant: "team-a"}},
			AllowedDeviceClasses: []string{gpuapi.ClassShared, gpuapi.ClassMIG},
			AllowAdminAccess:     true,
			DedicatedPool:        "team-a",
		},
	}
	anyTenant := exclusive.DeepCopy()
	anyTenant.Spec.Sharing = tenancyv1.SharingAny
	namespace := func(tenant string) *corev1.Namespace {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "ns"}}
		if tenant != "" {
			ns.Labels = map[string]string{tenancyv1.LabelCapsuleTenant: tenant}
		}
		return ns
	}
	for name, requestsOf := range claims {
		for _, tc := range []struct {
			who    string
			policy *admissionv1.MutatingAdmissionPolicy
			ns     *corev1.Namespace
			tenant *tenancyv1.GPUTenant
			group  string
			mine   bool
		}{
			{"exclusive tenant", tenantPolicy, namespace("team-a"), exclusive, "team-a", true},
			{"Any tenant", tenantPolicy, namespace("team-a"), anyTenant, tenancyv1.GroupAny, true},
			{"another tenant's namespace", tenantPolicy, namespace("team-b"), exclusive, "team-a", false},
			{"no tenant", untenantedPolicy, namespace(""), nil, tenancyv1.GroupUntenanted, true},
		} {
			t.Run(name+"/"+tc.who, func(t *testing.T) {
				requests := requestsOf(tc.group)
				claim := &resourceapi.ResourceClaim{
					TypeMeta:   metav1.TypeMeta{APIVersion: resourceapi.SchemeGroupVersion.String(), Kind: "ResourceClaim"},
					ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "c"},
					Spec:       resourceapi.ResourceClaimSpec{Devices: resourceapi.DeviceClaim{Requests: requests}},
				}
				var param runtime.Object
				if tc.tenant != nil {
					u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(tc.tenant)
					if err != nil {
						t.Fatal(err)
					}
					param = &unstructured.Unstructured{Object: u}
				}
				got := mutate(t, tc.policy, claim, tc.ns, param)
				want := requests
				if tc.mine {
					want = tenancy.SharingRequests(tc.group, requests)
				}
				if len(want) == 0 {
					want = nil
				}
				if diff := cmp.Diff(want, got.Spec.Devices.Requests); diff != "" {
					t.Errorf("the policy's requests differ from tenancy.SharingRequests (-Go +policy):\n%s", diff)
				}
				if tc.tenant != nil && tc.mine {
					if v := tenancy.ClaimViolations(tc.tenant, &got.Spec); len(v) != 0 {
						t.Errorf("the tenant's claims policy refuses the result: %v", v)
					}
				}
			})
		}
	}
}

// TestAdmissionPoliciesCompile compiles every expression of the chart's
// admission policies (variables, match conditions, validations and their
// messages, mutations) with the API server's own CEL compiler for admission
// policies, which refuses a policy with a compilation error at create time.
func TestAdmissionPoliciesCompile(t *testing.T) {
	manifest, err := render(t)
	if err != nil {
		t.Fatal(err)
	}
	objs := objects(t, manifest)
	check := func(t *testing.T, what string, errs []error) {
		t.Helper()
		for _, err := range errs {
			t.Errorf("%s: %v", what, err)
		}
	}
	compile := func(t *testing.T, paramKind bool, variables []admissionv1.Variable, conditions []admissionv1.MatchCondition) (*plugincel.CompositedCompiler, plugincel.OptionalVariableDeclarations) {
		t.Helper()
		compiler, err := plugincel.NewCompositedCompiler(environment.MustBaseEnvSet(environment.DefaultCompatibilityVersion()))
		if err != nil {
			t.Fatal(err)
		}
		opts := plugincel.OptionalVariableDeclarations{HasParams: paramKind, HasAuthorizer: true}
		for _, v := range variables {
			if r := compiler.CompileAndStoreVariable(&validating.Variable{Name: v.Name, Expression: v.Expression}, opts, environment.StoredExpressions); r.Error != nil {
				t.Errorf("variable %s: %v", v.Name, r.Error)
			}
		}
		for _, c := range conditions {
			check(t, "match condition "+c.Name, compiler.CompileCondition([]plugincel.ExpressionAccessor{&validating.ValidationCondition{Expression: c.Expression}}, opts, environment.StoredExpressions).CompilationErrors())
		}
		return compiler, opts
	}
	validatingPolicies := find[*admissionv1.ValidatingAdmissionPolicy](objs)
	mutatingPolicies := find[*admissionv1.MutatingAdmissionPolicy](objs)
	if len(validatingPolicies) == 0 || len(mutatingPolicies) == 0 {
		t.Fatalf("the chart renders %d validating and %d mutating admission policies", len(validatingPolicies), len(mutatingPolicies))
	}
	for _, p := range validatingPolicies {
		t.Run(p.Name, func(t *testing.T) {
			compiler, opts := compile(t, p.Spec.ParamKind != nil, p.Spec.Variables, p.Spec.MatchConditions)
			for i, v := range p.Spec.Validations {
				check(t, fmt.Sprintf("validation %d", i), compiler.CompileCondition([]plugincel.ExpressionAccessor{&validating.ValidationCondition{Expression: v.Expression}}, opts, environment.StoredExpressions).CompilationErrors())
				if v.MessageExpression != "" {
					check(t, fmt.Sprintf("validation %d's message", i), compiler.CompileCondition([]plugincel.ExpressionAccessor{&validating.MessageExpressionCondition{MessageExpression: v.MessageExpression}}, opts, environment.StoredExpressions).CompilationErrors())
				}
			}
		})
	}
	for _, p := range mutatingPolicies {
		t.Run(p.Name, func(t *testing.T) {
			compiler, opts := compile(t, p.Spec.ParamKind != nil, p.Spec.Variables, p.Spec.MatchConditions)
			opts.HasPatchTypes = true
			for i, m := range p.Spec.Mutations {
				if m.JSONPatch != nil {
					check(t, fmt.Sprintf("mutation %d", i), compiler.CompileMutatingEvaluator(&patch.JSONPatchCondition{Expression: m.JSONPatch.Expression}, opts, environment.StoredExpressions).CompilationErrors())
				}
			}
		})
	}
}
