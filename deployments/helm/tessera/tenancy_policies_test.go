package tessera

import (
	"context"
	"testing"

	"github.com/google/go-cmp/cmp"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/admission"
	plugincel "k8s.io/apiserver/pkg/admission/plugin/cel"
	"k8s.io/apiserver/pkg/admission/plugin/policy/validating"
	"k8s.io/apiserver/pkg/admission/plugin/webhook/matchconditions"
	"k8s.io/apiserver/pkg/admission/plugin/webhook/predicates/rules"
	celconfig "k8s.io/apiserver/pkg/apis/cel"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/authorization/authorizer"
	"k8s.io/apiserver/pkg/cel/environment"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

// validatingPolicy renders the chart and returns its ValidatingAdmissionPolicy
// name.
func validatingPolicy(t *testing.T, name string) *admissionv1.ValidatingAdmissionPolicy {
	t.Helper()
	manifest, err := render(t)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range find[*admissionv1.ValidatingAdmissionPolicy](objects(t, manifest)) {
		if p.Name == name {
			return p
		}
	}
	t.Fatalf("the chart renders no ValidatingAdmissionPolicy %s", name)
	return nil
}

// request is one admission request a validating policy sees.
type request struct {
	obj, old    runtime.Object
	gvk         schema.GroupVersionKind
	gvr         schema.GroupVersionResource
	subresource string
	op          admission.Operation
	ns          *corev1.Namespace
	param       runtime.Object
}

// denyAll is the authorizer of a user who may do nothing (no cluster admin).
var denyAll = authorizer.AuthorizerFunc(func(context.Context, authorizer.Attributes) (authorizer.Decision, string, error) {
	return authorizer.DecisionDeny, "", nil
})

// validate runs policy on req as the API server does once the policy matches
// (validating.compilePolicy and validator.Validate: match conditions, then
// validations), and returns the messages of its denials; nil if it admits.
// It fails the test if the policy's resource rules do not match the request.
func validate(t *testing.T, policy *admissionv1.ValidatingAdmissionPolicy, req request) []string {
	t.Helper()
	attrs := admission.NewAttributesRecord(req.obj, req.old, req.gvk, "", "", req.gvr, req.subresource, req.op, nil, false, &user.DefaultInfo{Name: "mallory"})
	if req.ns != nil && req.gvr.Resource != "namespaces" {
		attrs = admission.NewAttributesRecord(req.obj, req.old, req.gvk, req.ns.Name, "", req.gvr, req.subresource, req.op, nil, false, &user.DefaultInfo{Name: "mallory"})
	}
	if !matches(policy, attrs) {
		t.Fatalf("policy %s does not match %s %s/%s", policy.Name, req.op, req.gvr.Resource, req.subresource)
	}
	hasParam := policy.Spec.ParamKind != nil
	opts := plugincel.OptionalVariableDeclarations{HasParams: hasParam, HasAuthorizer: true}
	compiler, err := plugincel.NewCompositedCompiler(environment.MustBaseEnvSet(environment.DefaultCompatibilityVersion()))
	if err != nil {
		t.Fatal(err)
	}
	var variables []plugincel.NamedExpressionAccessor
	for _, v := range policy.Spec.Variables {
		variables = append(variables, &validating.Variable{Name: v.Name, Expression: v.Expression})
	}
	compiler.CompileAndStoreVariables(variables, opts, environment.StoredExpressions)
	var matcher matchconditions.Matcher
	if len(policy.Spec.MatchConditions) > 0 {
		var conds []plugincel.ExpressionAccessor
		for i := range policy.Spec.MatchConditions {
			conds = append(conds, (*matchconditions.MatchCondition)(&policy.Spec.MatchConditions[i]))
		}
		matcher = matchconditions.NewMatcher(compiler.CompileCondition(conds, opts, environment.StoredExpressions), policy.Spec.FailurePolicy, "policy", "validate", policy.Name)
	}
	var validations, messages []plugincel.ExpressionAccessor
	for _, v := range policy.Spec.Validations {
		validations = append(validations, &validating.ValidationCondition{Expression: v.Expression, Message: v.Message, Reason: v.Reason})
		var m plugincel.ExpressionAccessor
		if v.MessageExpression != "" {
			m = &validating.MessageExpressionCondition{MessageExpression: v.MessageExpression}
		}
		messages = append(messages, m)
	}
	validator := validating.NewValidator(
		compiler.CompileCondition(validations, opts, environment.StoredExpressions), matcher,
		compiler.CompileCondition(nil, opts, environment.StoredExpressions),
		compiler.CompileCondition(messages, plugincel.OptionalVariableDeclarations{HasParams: hasParam}, environment.StoredExpressions),
		policy.Spec.FailurePolicy, nil)
	versioned := &admission.VersionedAttributes{Attributes: attrs, VersionedKind: req.gvk, VersionedObject: admission.NewLazyObject(req.obj)}
	if req.old != nil {
		versioned.VersionedOldObject = admission.NewLazyObject(req.old)
	}
	res := validator.Validate(context.Background(), req.gvr, versioned, req.param, req.ns, celconfig.RuntimeCELCostBudget, denyAll)
	var out []string
	for _, d := range res.Decisions {
		if d.Action == validating.ActionDeny {
			out = append(out, d.Message)
		}
	}
	return out
}

// matches reports whether one of the policy's resource rules matches attrs,
// with the API server's own rule matcher.
func matches(policy *admissionv1.ValidatingAdmissionPolicy, attrs admission.Attributes) bool {
	for _, r := range policy.Spec.MatchConstraints.ResourceRules {
		m := rules.Matcher{Rule: r.RuleWithOperations, Attr: attrs}
		if m.Matches() {
			return true
		}
	}
	return false
}

// claimRequest is the creation of a claim of requests in ns.
func claimRequest(ns *corev1.Namespace, param runtime.Object, requests ...resourceapi.DeviceRequest) request {
	claim := sharingClaim(requests)
	return request{
		obj: claim, gvk: resourceapi.SchemeGroupVersion.WithKind("ResourceClaim"), gvr: resourceapi.SchemeGroupVersion.WithResource("resourceclaims"),
		op: admission.Create, ns: ns, param: param,
	}
}

// TestOutsidersPolicyMatchesItsGoTwin: outsiders.tenancy.tessera.dev, run by
// the API server's policy code with team-a as its parameter, refuses a claim
// exactly where tenancy.OutsiderViolations finds a violation, with its first
// message: in a namespace of no tenant and in team-b's, a dedicated class of
// team-a or a toleration that may tolerate team-a's sharing taint; in
// team-a's own namespaces, nothing (the claims policy judges those).
func TestOutsidersPolicyMatchesItsGoTwin(t *testing.T) {
	policy := validatingPolicy(t, tenancyv1.PolicyOutsiders)
	tenant := sharingTenant(false)
	exact := func(class string, tols ...resourceapi.DeviceToleration) resourceapi.DeviceRequest {
		return resourceapi.DeviceRequest{Name: "gpu", Exactly: &resourceapi.ExactDeviceRequest{
			DeviceClassName: class, AllocationMode: resourceapi.DeviceAllocationModeExactCount, Count: 1, Tolerations: tols,
		}}
	}
	alternatives := func(class string, tols ...resourceapi.DeviceToleration) resourceapi.DeviceRequest {
		return resourceapi.DeviceRequest{Name: "gpu", FirstAvailable: []resourceapi.DeviceSubRequest{
			{Name: "mig", DeviceClassName: gpuapi.ClassMIG, AllocationMode: resourceapi.DeviceAllocationModeExactCount, Count: 1},
			{Name: "other", DeviceClassName: class, AllocationMode: resourceapi.DeviceAllocationModeExactCount, Count: 1, Tolerations: tols},
		}}
	}
	tol := func(key string, op resourceapi.DeviceTolerationOperator, value string) resourceapi.DeviceToleration {
		return resourceapi.DeviceToleration{Key: key, Operator: op, Value: value, Effect: resourceapi.DeviceTaintEffectNoSchedule}
	}
	dedicated := tenancyv1.DedicatedClassName("team-a", gpuapi.ClassGPU)
	claims := map[string][]resourceapi.DeviceRequest{
		"the shipped class":                   {exact(gpuapi.ClassShared)},
		"team-a's dedicated class":            {exact(dedicated)},
		"team-a's dedicated alternative":      {alternatives(dedicated)},
		"team-b's dedicated class":            {exact(tenancyv1.DedicatedClassName("team-b", gpuapi.ClassGPU))},
		"team-a's taint":                      {exact(gpuapi.ClassShared, tenancy.Toleration("team-a"))},
		"team-a's taint without a key":        {exact(gpuapi.ClassShared, tol("", resourceapi.DeviceTolerationOpEqual, "team-a"))},
		"team-a's taint in an alternative":    {alternatives(gpuapi.ClassShared, tol("", resourceapi.DeviceTolerationOpEqual, "team-a"))},
		"every tenant's taint":                {exact(gpuapi.ClassShared, tol(tenancyv1.TaintKeyTenant, resourceapi.DeviceTolerationOpExists, ""))},
		"every taint":                         {exact(gpuapi.ClassShared, tol("", resourceapi.DeviceTolerationOpExists, ""))},
		"the untenanted and free tolerations": {exact(gpuapi.ClassShared, tenancy.Toleration(tenancyv1.GroupUntenanted), tenancy.Toleration(tenancyv1.GroupFree))},
		"the health taint":                    {exact(gpuapi.ClassShared, tol(gpuapi.TaintKeyUnhealthy, resourceapi.DeviceTolerationOpExists, ""))},
		"no devices":                          nil,
	}
	for name, requests := range claims {
		for who, ns := range map[string]*corev1.Namespace{
			"no tenant's": labelledNamespace(""), "team-b's": labelledNamespace("team-b"), "team-a's": labelledNamespace("team-a"),
		} {
			t.Run(name+"/"+who, func(t *testing.T) {
				got := validate(t, policy, claimRequest(ns, asParam(t, tenant), requests...))
				var want []string
				if who != "team-a's" {
					if v := tenancy.OutsiderViolations(tenant, &sharingClaim(requests).Spec); len(v) > 0 {
						want = []string{v[0].Message}
					}
				}
				if diff := cmp.Diff(want, got); diff != "" {
					t.Errorf("the policy's denials differ from tenancy.OutsiderViolations (-Go +policy):\n%s", diff)
				}
			})
		}
	}
}

// TestClaimsPolicyRefusesKeylessTolerations: the claims policy refuses a
// toleration without key, whatever its operator (DRA matches it to every
// key: with another tenant's name as value, it tolerates that tenant's
// sharing taint), as its Go twin does.
func TestClaimsPolicyRefusesKeylessTolerations(t *testing.T) {
	policy := validatingPolicy(t, tenancyv1.PolicyClaims)
	tenant := sharingTenant(false)
	ns := labelledNamespace("team-a")
	for name, tc := range map[string]struct {
		tol    resourceapi.DeviceToleration
		refuse bool
	}{
		"another tenant's taint without key": {resourceapi.DeviceToleration{Operator: resourceapi.DeviceTolerationOpEqual, Value: "team-b", Effect: resourceapi.DeviceTaintEffectNoSchedule}, true},
		"a value without key or operator":    {resourceapi.DeviceToleration{Value: "team-b"}, true},
		"every taint":                        {resourceapi.DeviceToleration{Operator: resourceapi.DeviceTolerationOpExists}, true},
		"the tenant's own":                   {tenancy.Toleration("team-a"), false},
		"the health taint":                   {resourceapi.DeviceToleration{Key: gpuapi.TaintKeyUnhealthy, Operator: resourceapi.DeviceTolerationOpExists}, false},
	} {
		t.Run(name, func(t *testing.T) {
			r := resourceapi.DeviceRequest{Name: "gpu", Exactly: &resourceapi.ExactDeviceRequest{
				DeviceClassName: gpuapi.ClassShared, AllocationMode: resourceapi.DeviceAllocationModeExactCount, Count: 1,
				Tolerations: []resourceapi.DeviceToleration{tc.tol},
			}}
			got := validate(t, policy, claimRequest(ns, asParam(t, tenant), r))
			if refused := len(got) > 0; refused != tc.refuse {
				t.Errorf("policy refuses %v (%v), want %v", refused, got, tc.refuse)
			}
			if twin := len(tenancy.ClaimViolations(tenant, &sharingClaim([]resourceapi.DeviceRequest{r}).Spec)) > 0; twin != tc.refuse {
				t.Errorf("Go twin refuses %v, want %v", twin, tc.refuse)
			}
		})
	}
}

// TestNamespaceLabelPoliciesCoverSubresources: both label policies match
// updates of namespaces/status and namespaces/finalize, which carry the
// namespace's labels through, and refuse there a user who is no tenancy
// admin moving a namespace to another tenant or granting it DRA admin
// access; an unrelated label is fine.
func TestNamespaceLabelPoliciesCoverSubresources(t *testing.T) {
	fixed := validatingPolicy(t, tenancyv1.PolicyNamespaceLabels)
	selected := validatingPolicy(t, tenancyv1.PolicyTenantLabels)
	tenant := sharingTenant(false)
	old := labelledNamespace("team-a")
	for name, tc := range map[string]struct {
		labels map[string]string
		refuse bool
	}{
		"move to another tenant":     {map[string]string{tenancyv1.LabelCapsuleTenant: "team-b"}, true},
		"leave the tenant":           {map[string]string{}, true},
		"grant DRA admin access":     {map[string]string{tenancyv1.LabelCapsuleTenant: "team-a", tenancyv1.LabelAdminAccess: "true"}, true},
		"an unrelated label is fine": {map[string]string{tenancyv1.LabelCapsuleTenant: "team-a", "team": "blue"}, false},
	} {
		for _, sub := range []string{"", "status", "finalize"} {
			t.Run(name+"/"+sub, func(t *testing.T) {
				updated := old.DeepCopy()
				updated.Labels = tc.labels
				updated.TypeMeta = metav1.TypeMeta{APIVersion: "v1", Kind: "Namespace"}
				req := request{
					obj: updated, old: old, gvk: corev1.SchemeGroupVersion.WithKind("Namespace"), gvr: corev1.SchemeGroupVersion.WithResource("namespaces"),
					subresource: sub, op: admission.Update,
				}
				denials := validate(t, fixed, req)
				req.param = asParam(t, tenant)
				denials = append(denials, validate(t, selected, req)...)
				if refused := len(denials) > 0; refused != tc.refuse {
					t.Errorf("refused %v (%v), want %v", refused, denials, tc.refuse)
				}
			})
		}
	}
}
