package tessera

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
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

// sharingPolicies renders the chart and returns its two sharing policies:
// the tenants' and the untenanted one.
func sharingPolicies(t *testing.T) (tenantPolicy, untenantedPolicy *admissionv1.MutatingAdmissionPolicy) {
	t.Helper()
	manifest, err := render(t)
	if err != nil {
		t.Fatal(err)
	}
	policies := map[string]*admissionv1.MutatingAdmissionPolicy{}
	for _, p := range find[*admissionv1.MutatingAdmissionPolicy](objects(t, manifest)) {
		policies[p.Name] = p
	}
	tenantPolicy, untenantedPolicy = policies[tenancyv1.PolicySharing], policies[tenancyv1.PolicySharingUntenanted]
	if tenantPolicy == nil || untenantedPolicy == nil {
		t.Fatalf("the chart renders the MutatingAdmissionPolicies %v, want %s and %s", policies, tenancyv1.PolicySharing, tenancyv1.PolicySharingUntenanted)
	}
	return tenantPolicy, untenantedPolicy
}

// sharingClaims are the claims the sharing tests shape: each as its creator
// wrote it, for a claim of a group.
func sharingClaims() map[string]func(group string) []resourceapi.DeviceRequest {
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
	return map[string]func(group string) []resourceapi.DeviceRequest{
		"a share": func(string) []resourceapi.DeviceRequest { return []resourceapi.DeviceRequest{share} },
		"a share tolerating a health taint": func(string) []resourceapi.DeviceRequest {
			return []resourceapi.DeviceRequest{tolerating(share, health)}
		},
		"a share with both its tolerations": func(g string) []resourceapi.DeviceRequest {
			return []resourceapi.DeviceRequest{tolerating(share, tenancy.Toleration(g), tenancy.Toleration(tenancyv1.GroupFree))}
		},
		"a share tolerating the untenanted GPUs": func(string) []resourceapi.DeviceRequest {
			return []resourceapi.DeviceRequest{tolerating(share, tenancy.Toleration(tenancyv1.GroupUntenanted))}
		},
		"alternatives tolerating the untenanted GPUs": func(string) []resourceapi.DeviceRequest {
			r := *alternatives.DeepCopy()
			for i := range r.FirstAvailable {
				r.FirstAvailable[i].Tolerations = append(r.FirstAvailable[i].Tolerations, tenancy.Toleration(tenancyv1.GroupUntenanted))
			}
			return []resourceapi.DeviceRequest{r}
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
}

// sharingTenant is an exclusive tenant, team-a, selecting the namespaces
// labelled into it; with spec.sharing Any when sharingAny is set.
func sharingTenant(sharingAny bool) *tenancyv1.GPUTenant {
	tenant := &tenancyv1.GPUTenant{
		TypeMeta:   metav1.TypeMeta{APIVersion: tenancyv1.SchemeGroupVersion.String(), Kind: "GPUTenant"},
		ObjectMeta: metav1.ObjectMeta{Name: "team-a"},
		Spec: tenancyv1.GPUTenantSpec{
			NamespaceSelector:    metav1.LabelSelector{MatchLabels: map[string]string{tenancyv1.LabelCapsuleTenant: "team-a"}},
			AllowedDeviceClasses: []string{gpuapi.ClassShared, gpuapi.ClassMIG},
			AllowAdminAccess:     true,
			DedicatedPool:        "team-a",
		},
	}
	if sharingAny {
		tenant.Spec.Sharing = tenancyv1.SharingAny
	}
	return tenant
}

// labelledNamespace is the namespace ns, labelled into tenant ("": none).
func labelledNamespace(tenant string) *corev1.Namespace {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "ns"}}
	if tenant != "" {
		ns.Labels = map[string]string{tenancyv1.LabelCapsuleTenant: tenant}
	}
	return ns
}

// asParam is tenant as the policy's parameter (nil for none), as the API
// server passes it.
func asParam(t *testing.T, tenant *tenancyv1.GPUTenant) runtime.Object {
	t.Helper()
	if tenant == nil {
		return nil
	}
	u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(tenant)
	if err != nil {
		t.Fatal(err)
	}
	return &unstructured.Unstructured{Object: u}
}

// sharingClaim is a claim of requests in namespace "ns".
func sharingClaim(requests []resourceapi.DeviceRequest) *resourceapi.ResourceClaim {
	return &resourceapi.ResourceClaim{
		TypeMeta:   metav1.TypeMeta{APIVersion: resourceapi.SchemeGroupVersion.String(), Kind: "ResourceClaim"},
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "c"},
		Spec:       resourceapi.ResourceClaimSpec{Devices: resourceapi.DeviceClaim{Requests: requests}},
	}
}

// TestSharingPoliciesMatchTheirGoTwin: the chart's two sharing policies,
// compiled and applied by the API server's admission-policy code, shape every
// kind of claim exactly as tenancy.SharingRequests says, for an exclusive
// tenant, an Any tenant and a namespace of no tenant; a tenant's policy
// leaves the claims of namespaces it does not select alone; and the result
// passes the tenant's claims policy (its Go twin).
func TestSharingPoliciesMatchTheirGoTwin(t *testing.T) {
	tenantPolicy, untenantedPolicy := sharingPolicies(t)
	exclusive, anyTenant := sharingTenant(false), sharingTenant(true)
	for name, requestsOf := range sharingClaims() {
		for _, tc := range []struct {
			who    string
			policy *admissionv1.MutatingAdmissionPolicy
			ns     *corev1.Namespace
			tenant *tenancyv1.GPUTenant
			group  string
			mine   bool
		}{
			{"exclusive tenant", tenantPolicy, labelledNamespace("team-a"), exclusive, "team-a", true},
			{"Any tenant", tenantPolicy, labelledNamespace("team-a"), anyTenant, tenancyv1.GroupAny, true},
			{"another tenant's namespace", tenantPolicy, labelledNamespace("team-b"), exclusive, "team-a", false},
			{"no tenant", untenantedPolicy, labelledNamespace(""), nil, tenancyv1.GroupUntenanted, true},
		} {
			t.Run(name+"/"+tc.who, func(t *testing.T) {
				requests := requestsOf(tc.group)
				got := mutate(t, tc.policy, sharingClaim(requests), tc.ns, asParam(t, tc.tenant))
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

// TestSharingPoliciesAgreeWhenANamespaceJoinsATenant: for about a second
// after a namespace joins a tenant, the untenanted policy's binding (kept by
// the controller) still covers it while the tenant's policy already selects
// it, and the API server runs the two in no fixed order. In either order,
// every kind of claim comes out as the twins compose, tolerating the
// tenant's group and never the untenanted one, and passes the tenant's
// claims policy; with the tenant's policy first, the untenanted one changes
// nothing.
func TestSharingPoliciesAgreeWhenANamespaceJoinsATenant(t *testing.T) {
	tenantPolicy, untenantedPolicy := sharingPolicies(t)
	ns := labelledNamespace("team-a")
	untenanted := tenancy.Toleration(tenancyv1.GroupUntenanted)
	for _, tenant := range []*tenancyv1.GPUTenant{sharingTenant(false), sharingTenant(true)} {
		group := tenancy.SharingGroup(tenant)
		for name, requestsOf := range sharingClaims() {
			requests := requestsOf(group)
			t.Run(name+"/"+group+"/untenanted first", func(t *testing.T) {
				first := mutate(t, untenantedPolicy, sharingClaim(requests), ns, nil)
				got := mutate(t, tenantPolicy, first, ns, asParam(t, tenant))
				want := tenancy.SharingRequests(group, tenancy.SharingRequests(tenancyv1.GroupUntenanted, requests))
				if diff := cmp.Diff(want, got.Spec.Devices.Requests, cmpopts.EquateEmpty()); diff != "" {
					t.Errorf("the policies' requests differ from their Go twins' (-Go +policies):\n%s", diff)
				}
				checkJoined(t, tenant, got, untenanted)
			})
			t.Run(name+"/"+group+"/tenant first", func(t *testing.T) {
				first := mutate(t, tenantPolicy, sharingClaim(requests), ns, asParam(t, tenant))
				got := mutate(t, untenantedPolicy, first, ns, nil)
				if diff := cmp.Diff(first.Spec.Devices.Requests, got.Spec.Devices.Requests); diff != "" {
					t.Errorf("the untenanted policy changed a claim the tenant's policy shaped (-tenant's +both):\n%s", diff)
				}
				want := tenancy.SharingRequests(tenancyv1.GroupUntenanted, tenancy.SharingRequests(group, requests))
				if diff := cmp.Diff(want, got.Spec.Devices.Requests, cmpopts.EquateEmpty()); diff != "" {
					t.Errorf("the policies' requests differ from their Go twins' (-Go +policies):\n%s", diff)
				}
				checkJoined(t, tenant, got, untenanted)
			})
		}
	}
}

// checkJoined checks a claim of a namespace that has just joined tenant:
// the tenant's claims policy (its Go twin) accepts it, and no request or
// alternative tolerates untenanted.
func checkJoined(t *testing.T, tenant *tenancyv1.GPUTenant, claim *resourceapi.ResourceClaim, untenanted resourceapi.DeviceToleration) {
	t.Helper()
	if v := tenancy.ClaimViolations(tenant, &claim.Spec); len(v) != 0 {
		t.Errorf("the tenant's claims policy refuses the result: %v", v)
	}
	for _, r := range claim.Spec.Devices.Requests {
		tols := [][]resourceapi.DeviceToleration{}
		if r.Exactly != nil {
			tols = append(tols, r.Exactly.Tolerations)
		}
		for _, s := range r.FirstAvailable {
			tols = append(tols, s.Tolerations)
		}
		for _, l := range tols {
			if slices.Contains(l, untenanted) {
				t.Errorf("request %s tolerates the untenanted GPUs: %+v", r.Name, l)
			}
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
