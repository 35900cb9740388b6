package tessera

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/admission"
	plugincel "k8s.io/apiserver/pkg/admission/plugin/cel"
	"k8s.io/apiserver/pkg/admission/plugin/policy/validating"
	celconfig "k8s.io/apiserver/pkg/apis/cel"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/cel/environment"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

const controllerUser = "system:serviceaccount:tessera-system:tessera-controller"

// admits runs policy's match conditions and validations on one request, with
// the API server's own admission-policy compiler, as
// k8s.io/apiserver/pkg/admission/plugin/policy/validating evaluates them:
// it returns whether the policy applies and, if so, the messages of the
// validations that fail.
func admits(t *testing.T, policy *admissionv1.ValidatingAdmissionPolicy, username string, op admission.Operation, gvr schema.GroupVersionResource, kind string, obj, old runtime.Object) (matched bool, denials []string) {
	t.Helper()
	return admitsUser(t, policy, &user.DefaultInfo{Name: username}, op, gvr, kind, obj, old)
}

// admitsUser is admits for a user with more than a name (e.g. the node name
// a pod-bound token carries in its extra info).
func admitsUser(t *testing.T, policy *admissionv1.ValidatingAdmissionPolicy, userInfo user.Info, op admission.Operation, gvr schema.GroupVersionResource, kind string, obj, old runtime.Object) (matched bool, denials []string) {
	t.Helper()
	return admitsWith(t, policy, userInfo, op, gvr, "", kind, obj, old, nil)
}

// admitsWith is admitsUser for a request of a subresource, with the
// policy's parameter (nil: none).
func admitsWith(t *testing.T, policy *admissionv1.ValidatingAdmissionPolicy, userInfo user.Info, op admission.Operation, gvr schema.GroupVersionResource, subresource, kind string, obj, old, param runtime.Object) (matched bool, denials []string) {
	t.Helper()
	compiler, err := plugincel.NewCompositedCompiler(environment.MustBaseEnvSet(environment.DefaultCompatibilityVersion()))
	if err != nil {
		t.Fatal(err)
	}
	opts := plugincel.OptionalVariableDeclarations{HasAuthorizer: true, HasParams: policy.Spec.ParamKind != nil}
	var variables []plugincel.NamedExpressionAccessor
	for _, v := range policy.Spec.Variables {
		variables = append(variables, &validating.Variable{Name: v.Name, Expression: v.Expression})
	}
	compiler.CompileAndStoreVariables(variables, opts, environment.StoredExpressions)
	gvk := gvr.GroupVersion().WithKind(kind)
	var name, namespace string
	for _, o := range []runtime.Object{obj, old} {
		if m, ok := o.(metav1.Object); ok && o != nil {
			name, namespace = m.GetName(), m.GetNamespace()
		}
	}
	attrs := admission.NewAttributesRecord(obj, old, gvk, namespace, name, gvr, subresource, op, nil, false, userInfo)
	request := plugincel.CreateAdmissionRequest(attrs, metav1.GroupVersionResource(gvr), metav1.GroupVersionKind(gvk))
	versioned := &admission.VersionedAttributes{Attributes: attrs, VersionedKind: gvk, VersionedObject: admission.NewLazyObject(obj), VersionedOldObject: admission.NewLazyObject(old)}
	eval := func(exprs []plugincel.ExpressionAccessor) []plugincel.EvaluationResult {
		t.Helper()
		cond := compiler.CompileCondition(exprs, opts, environment.StoredExpressions)
		for _, err := range cond.CompilationErrors() {
			t.Fatalf("policy %s: %v", policy.Name, err)
		}
		results, _, err := cond.ForInput(compiler.CreateContext(context.Background()), versioned, request, plugincel.OptionalVariableBindings{VersionedParams: param}, nil, celconfig.RuntimeCELCostBudget)
		if err != nil {
			t.Fatalf("policy %s: %v", policy.Name, err)
		}
		return results
	}
	var conditions []plugincel.ExpressionAccessor
	for _, c := range policy.Spec.MatchConditions {
		conditions = append(conditions, &validating.ValidationCondition{Expression: c.Expression})
	}
	for _, r := range eval(conditions) {
		if r.Error != nil {
			t.Fatalf("policy %s match condition: %v", policy.Name, r.Error)
		}
		if r.EvalResult.Value() != true {
			return false, nil
		}
	}
	var validations []plugincel.ExpressionAccessor
	for _, v := range policy.Spec.Validations {
		validations = append(validations, &validating.ValidationCondition{Expression: v.Expression})
	}
	for i, r := range eval(validations) {
		if r.Error != nil {
			t.Fatalf("policy %s validation %d: %v", policy.Name, i, r.Error)
		}
		if r.EvalResult.Value() != true {
			msg := policy.Spec.Validations[i].Message
			if msg == "" {
				msg = policy.Spec.Validations[i].MessageExpression
			}
			denials = append(denials, msg)
		}
	}
	return true, denials
}

// controllerScopePolicy renders the chart and returns its controller-scope
// policy, checking that a binding denies with it.
func controllerScopePolicy(t *testing.T) *admissionv1.ValidatingAdmissionPolicy {
	t.Helper()
	manifest, err := render(t)
	if err != nil {
		t.Fatal(err)
	}
	objs := objects(t, manifest)
	var policy *admissionv1.ValidatingAdmissionPolicy
	for _, p := range find[*admissionv1.ValidatingAdmissionPolicy](objs) {
		if p.Name == "tessera-controller-scope" {
			policy = p
		}
	}
	if policy == nil {
		t.Fatal("the chart renders no controller-scope ValidatingAdmissionPolicy")
	}
	if policy.Spec.FailurePolicy == nil || *policy.Spec.FailurePolicy != admissionv1.Fail {
		t.Error("the controller-scope policy must fail closed")
	}
	var bound bool
	for _, b := range find[*admissionv1.ValidatingAdmissionPolicyBinding](objs) {
		if b.Spec.PolicyName == policy.Name && slices.Contains(b.Spec.ValidationActions, admissionv1.Deny) {
			bound = true
		}
	}
	if !bound {
		t.Error("the controller-scope policy has no binding that denies")
	}
	return policy
}

// TestControllerScope: the controller's account may write the quotas,
// classes and taint rules the controller makes (the very objects pkg/tenancy
// builds), and nothing else of those kinds; other users are not its concern.
func TestControllerScope(t *testing.T) {
	policy := controllerScopePolicy(t)
	tenant := &tenancyv1.GPUTenant{
		ObjectMeta: metav1.ObjectMeta{Name: "team-a"},
		Spec: tenancyv1.GPUTenantSpec{
			DedicatedPool:  "team-a",
			NamespaceQuota: &tenancyv1.NamespaceQuota{Devices: map[string]int64{gpuapi.ClassGPU: 2}},
		},
	}
	quota := tenancy.Quota(tenant, "ns-a")
	if quota == nil {
		t.Fatal("no quota for a tenant with a namespace quota")
	}
	classes := tenancy.DedicatedClasses(tenant)
	gpu := tenancy.DeviceID{Driver: gpuapi.DriverName, Pool: "node-1", Device: "gpu-0-shared"}
	rules := tenancy.TaintRules([]tenancy.DeviceID{gpu}, map[tenancy.DeviceID][]string{gpu: {"team-a"}})

	foreignQuota := &corev1.ResourceQuota{ObjectMeta: metav1.ObjectMeta{Name: "compute", Namespace: "ns-b"}}
	renamedQuota := quota.DeepCopy()
	renamedQuota.Name = "other"
	shippedClass := &resourceapi.DeviceClass{ObjectMeta: metav1.ObjectMeta{Name: gpuapi.ClassGPU, Labels: map[string]string{tenancyv1.LabelManagedBy: "Helm"}}}
	shippedClassLabelled := shippedClass.DeepCopy()
	shippedClassLabelled.Labels[tenancyv1.LabelManagedBy] = tenancyv1.ManagedByValue
	evicting := rules[0].DeepCopy()
	evicting.Spec.Taint.Effect = resourceapi.DeviceTaintEffectNoExecute
	otherDriver := rules[0].DeepCopy()
	otherDriver.Spec.DeviceSelector.Driver = new("gpu.nvidia.com")
	foreignRule := &resourceapi.DeviceTaintRule{ObjectMeta: metav1.ObjectMeta{Name: "maintenance"}}

	quotas := corev1.SchemeGroupVersion.WithResource("resourcequotas")
	deviceClasses := resourceapi.SchemeGroupVersion.WithResource("deviceclasses")
	taintRules := resourceapi.SchemeGroupVersion.WithResource("devicetaintrules")
	type request struct {
		user     string
		op       admission.Operation
		gvr      schema.GroupVersionResource
		kind     string
		obj, old runtime.Object
	}
	byController := func(op admission.Operation, gvr schema.GroupVersionResource, kind string, obj, old runtime.Object) request {
		return request{controllerUser, op, gvr, kind, obj, old}
	}
	tests := map[string]struct {
		request request
		allowed bool
	}{
		"create its quota":                         {byController(admission.Create, quotas, "ResourceQuota", quota, nil), true},
		"update its quota":                         {byController(admission.Update, quotas, "ResourceQuota", quota, quota), true},
		"delete its quota":                         {byController(admission.Delete, quotas, "ResourceQuota", nil, quota), true},
		"create a quota of another name":           {byController(admission.Create, quotas, "ResourceQuota", renamedQuota, nil), false},
		"take over a namespace's quota":            {byController(admission.Update, quotas, "ResourceQuota", quota, foreignQuota), false},
		"delete a namespace's quota":               {byController(admission.Delete, quotas, "ResourceQuota", nil, foreignQuota), false},
		"create an unlabelled quota":               {byController(admission.Create, quotas, "ResourceQuota", foreignQuota, nil), false},
		"create a dedicated class":                 {byController(admission.Create, deviceClasses, "DeviceClass", classes[0], nil), true},
		"delete a dedicated class":                 {byController(admission.Delete, deviceClasses, "DeviceClass", nil, classes[len(classes)-1]), true},
		"rewrite a shipped class":                  {byController(admission.Update, deviceClasses, "DeviceClass", shippedClassLabelled, shippedClass), false},
		"delete a shipped class":                   {byController(admission.Delete, deviceClasses, "DeviceClass", nil, shippedClass), false},
		"create a labelled class of other name":    {byController(admission.Create, deviceClasses, "DeviceClass", shippedClassLabelled, nil), false},
		"create its taint rule":                    {byController(admission.Create, taintRules, "DeviceTaintRule", rules[0], nil), true},
		"restamp its taint rule":                   {byController(admission.Update, taintRules, "DeviceTaintRule", rules[0], rules[0]), true},
		"delete its taint rule":                    {byController(admission.Delete, taintRules, "DeviceTaintRule", nil, rules[0]), true},
		"evict with a taint rule":                  {byController(admission.Create, taintRules, "DeviceTaintRule", evicting, nil), false},
		"taint another driver's devices":           {byController(admission.Update, taintRules, "DeviceTaintRule", otherDriver, rules[0]), false},
		"delete an administrator's taint rule":     {byController(admission.Delete, taintRules, "DeviceTaintRule", nil, foreignRule), false},
		"an administrator deletes a shipped class": {request{"admin", admission.Delete, deviceClasses, "DeviceClass", nil, shippedClass}, true},
	}
	for i, c := range classes {
		if !strings.HasSuffix(c.Name, ".dedicated."+gpuapi.Classes[i]) {
			t.Fatalf("dedicated class %s is not named after %s", c.Name, gpuapi.Classes[i])
		}
		tests["create the dedicated copy of "+gpuapi.Classes[i]] = struct {
			request request
			allowed bool
		}{byController(admission.Create, deviceClasses, "DeviceClass", c, nil), true}
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r := tc.request
			matched, denials := admits(t, policy, r.user, r.op, r.gvr, r.kind, r.obj, r.old)
			if allowed := !matched || len(denials) == 0; allowed != tc.allowed {
				t.Errorf("allowed = %v, want %v (denials %q)", allowed, tc.allowed, denials)
			}
		})
	}
}

// TestControllerRBACIsNarrow: what RBAC can narrow by name is narrowed, and
// the kinds it cannot are matched by the controller-scope policy.
func TestControllerRBACIsNarrow(t *testing.T) {
	manifest, err := render(t)
	if err != nil {
		t.Fatal(err)
	}
	objs := objects(t, manifest)
	var rules []rbacv1.PolicyRule
	for _, r := range find[*rbacv1.ClusterRole](objs) {
		if r.Name == "tessera-controller" {
			rules = append(rules, r.Rules...)
		}
	}
	for _, r := range find[*rbacv1.Role](objs) {
		if r.Name == "tessera-controller-leader-election" {
			rules = append(rules, r.Rules...)
		}
	}
	if len(rules) == 0 {
		t.Fatal("no controller ClusterRole or leader-election Role")
	}
	// granted lists, per "resource verb", the names it is granted on ("*":
	// any).
	granted := map[string][]string{}
	for _, r := range rules {
		for _, res := range r.Resources {
			for _, v := range r.Verbs {
				names := r.ResourceNames
				if len(names) == 0 {
					names = []string{"*"}
				}
				granted[res+" "+v] = append(granted[res+" "+v], names...)
			}
		}
	}
	want := map[string][]string{
		// The controller writes what it owns by server-side apply (create
		// and patch), never by update.
		"resourcequotas update":                    nil,
		"resourcequotas patch":                     {tenancyv1.QuotaName},
		"resourcequotas delete":                    {tenancyv1.QuotaName},
		"deviceclasses update":                     nil,
		"validatingadmissionpolicybindings update": nil,
		"validatingadmissionpolicybindings delete": {tenancyv1.PolicyUntenanted},
		"mutatingadmissionpolicybindings update":   nil,
		"mutatingadmissionpolicybindings patch":    {tenancyv1.PolicySharingUntenanted},
		"mutatingadmissionpolicybindings delete":   nil,
		"leases get":                               {"tessera-dra-controller"},
		"leases update":                            {"tessera-dra-controller"},
		"leases delete":                            nil,
		// The idle reports (gpu-idle.<node>): read only, and only in the
		// release's namespace, where the Leases are the controller's and
		// the plugins' own.
		"leases list":  {"*"},
		"leases watch": {"*"},
	}
	for key, names := range want {
		if diff := cmp.Diff(names, granted[key]); diff != "" {
			t.Errorf("controller may %s on (-want +got):\n%s", key, diff)
		}
	}
	// What RBAC grants on any name is what the policy narrows.
	policy := controllerScopePolicy(t)
	scoped := map[string]bool{}
	for _, r := range policy.Spec.MatchConstraints.ResourceRules {
		for _, res := range r.Resources {
			scoped[res] = slices.Contains(r.Operations, admissionv1.Create) && slices.Contains(r.Operations, admissionv1.Update) && slices.Contains(r.Operations, admissionv1.Delete)
		}
	}
	for _, res := range []string{"resourcequotas", "deviceclasses", "devicetaintrules"} {
		if !scoped[res] {
			t.Errorf("the controller-scope policy does not check every create, update and delete of %s", res)
		}
	}
}
