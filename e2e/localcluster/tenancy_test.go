package localcluster

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	crclient "sigs.k8s.io/controller-runtime/pkg/client"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/internal/testing/builder"
)

// TestTenancyAttackMatrix is docs/tenancy.md's attack matrix: every way a
// tenant might try to get a device it may not have, each refused by the API
// server with a message naming the tenant, the request and the class; and
// the attacks from namespaces of no tenant and through namespace
// subresources, each checked to miss its goal (tenancy_attacks_test.go).
func TestTenancyAttackMatrix(t *testing.T) {
	other := newTenant(t, "other", tenancyv1.GPUTenantSpec{DedicatedPool: poolA})
	tenant := newTenant(t, "team", tenancyv1.GPUTenantSpec{AllowedDeviceClasses: []string{gpuapi.ClassShared, gpuapi.ClassMIG}})
	ns := tenantNamespace(t, tenant.Name)
	// Namespaces of the subtests below, made here: subtest names do not
	// make namespace names.
	adminNS := tenantNamespace(t, tenant.Name)
	labelNamespace(t, adminNS, map[string]string{tenancyv1.LabelAdminAccess: "true"})
	shared := tenantNamespace(t, tenant.Name)
	victim := tenantNamespace(t, other.Name)
	free := newNamespace(t)
	outside, unbound, churn := newNamespace(t), newNamespace(t), newNamespace(t)
	wholeTenant := newTenant(t, "whole", tenancyv1.GPUTenantSpec{AllowedDeviceClasses: []string{gpuapi.ClassGPU}})
	wholeNS := tenantNamespace(t, wholeTenant.Name)
	sharesOnly := tenancyv1.GPUTenantSpec{AllowedDeviceClasses: []string{gpuapi.ClassShared}}
	mixedTenant, tinyTenant := newTenant(t, "mixed", sharesOnly), newTenant(t, "tiny", sharesOnly)
	mixedNS, tinyNS := tenantNamespace(t, mixedTenant.Name), tenantNamespace(t, tinyTenant.Name)
	// Room for one whole H200 (about 140Gi) and not two.
	extendedTenant := newTenant(t, "extended", tenancyv1.GPUTenantSpec{AllowedDeviceClasses: []string{gpuapi.ClassShared, gpuapi.ClassGPU},
		Budget: &tenancyv1.Budget{GPUMemory: new(resource.MustParse("200Gi"))}})
	extendedNS := tenantNamespace(t, extendedTenant.Name)
	// Less than one 1g.18gb partition: every claim of floodTenant is over budget.
	floodTenant := newTenant(t, "flood", tenancyv1.GPUTenantSpec{AllowedDeviceClasses: []string{gpuapi.ClassMIG},
		Budget: &tenancyv1.Budget{GPUMemory: new(resource.MustParse("1Gi"))}})
	steadyTenant := newTenant(t, "steady", tenancyv1.GPUTenantSpec{AllowedDeviceClasses: []string{gpuapi.ClassMIG}})
	floodNS, steadyNS := tenantNamespace(t, floodTenant.Name), tenantNamespace(t, steadyTenant.Name)
	// A tenant allowed admin access, in a namespace with DRA's admin label,
	// and another tenant beside it.
	adminTenant := newTenant(t, "admin", tenancyv1.GPUTenantSpec{AllowedDeviceClasses: []string{gpuapi.ClassMIG, gpuapi.ClassShared}, AllowAdminAccess: true})
	adminAccessNS := tenantNamespace(t, adminTenant.Name)
	labelNamespace(t, adminAccessNS, map[string]string{tenancyv1.LabelAdminAccess: "true"})
	bystanderNS := tenantNamespace(t, newTenant(t, "bystander", tenancyv1.GPUTenantSpec{AllowedDeviceClasses: []string{gpuapi.ClassGPU}}).Name)
	// Room for one whole H200 and not two, in shares.
	extSharesTenant := newTenant(t, "extshares", tenancyv1.GPUTenantSpec{AllowedDeviceClasses: []string{gpuapi.ClassShared},
		Budget: &tenancyv1.Budget{GPUMemory: new(resource.MustParse("200Gi"))}})
	extSharesNS, beforePolicies := tenantNamespace(t, extSharesTenant.Name), newNamespace(t)
	tolerating := func(key string, op resourceapi.DeviceTolerationOperator) resourceapi.DeviceRequest {
		r := builder.MakeRequest("gpu", gpuapi.ClassShared).Obj()
		r.Exactly.Tolerations = []resourceapi.DeviceToleration{{Key: key, Operator: op}}
		return r
	}
	firstAvailable := resourceapi.DeviceRequest{Name: "gpu", FirstAvailable: []resourceapi.DeviceSubRequest{
		{Name: "share", DeviceClassName: gpuapi.ClassShared},
		{Name: "whole", DeviceClassName: gpuapi.ClassGPU},
	}}
	adminAccess := builder.MakeRequest("gpu", gpuapi.ClassMIG).Obj()
	adminAccess.Exactly.AdminAccess = new(true)
	withConfig := claimSpec(builder.MakeRequest("gpu", gpuapi.ClassShared).Obj())
	withConfig.Devices.Config = []resourceapi.DeviceClaimConfiguration{{DeviceConfiguration: resourceapi.DeviceConfiguration{
		Opaque: &resourceapi.OpaqueDeviceConfiguration{Driver: gpuapi.DriverName, Parameters: runtime.RawExtension{Raw: []byte(`{"apiVersion":"config.gpu.tessera.dev/v1alpha1","kind":"GPUConfig"}`)}},
	}}}

	for name, tc := range map[string]struct {
		spec resourceapi.ResourceClaimSpec
		want []string // nil: allowed
	}{
		"a class the tenant may use":         {spec: claimSpec(migRequest("gpu"))},
		"a class the tenant may not use":     {spec: claimSpec(builder.MakeRequest("gpu", gpuapi.ClassGPU).Obj()), want: []string{"GPUTenant " + tenant.Name, "request gpu", "DeviceClass gpu.tessera.dev"}},
		"a forbidden class in a 2nd request": {spec: claimSpec(migRequest("ok"), builder.MakeRequest("big", gpuapi.ClassGPU).Obj()), want: []string{"GPUTenant " + tenant.Name, "request big", "DeviceClass gpu.tessera.dev"}},
		"a forbidden firstAvailable alternative": {
			spec: claimSpec(firstAvailable), want: []string{"GPUTenant " + tenant.Name, "request gpu/whole", "DeviceClass gpu.tessera.dev"},
		},
		"another tenant's dedicated class": {
			spec: claimSpec(builder.MakeRequest("gpu", tenancyv1.DedicatedClassName(other.Name, gpuapi.ClassMIG)).Obj()),
			want: []string{"GPUTenant " + tenant.Name, "request gpu", "DeviceClass " + tenancyv1.DedicatedClassName(other.Name, gpuapi.ClassMIG)},
		},
		"opaque config for Tessera":    {spec: withConfig, want: []string{"GPUTenant " + tenant.Name, "opaque config for gpu.tessera.dev"}},
		"tolerating the tenancy taint": {spec: claimSpec(tolerating(tenancyv1.TaintKeyTenant, resourceapi.DeviceTolerationOpExists)), want: []string{"GPUTenant " + tenant.Name, "request gpu", "tenancy taint"}},
		"tolerating every taint":       {spec: claimSpec(tolerating("", resourceapi.DeviceTolerationOpExists)), want: []string{"GPUTenant " + tenant.Name, "request gpu", "tenancy taint"}},
		// DRA matches a toleration without key to every key.
		"tolerating another tenant's taint without a key": {
			spec: claimSpec(withTolerations(builder.MakeRequest("gpu", gpuapi.ClassShared).Obj(), resourceapi.DeviceToleration{
				Operator: resourceapi.DeviceTolerationOpEqual, Value: other.Name, Effect: resourceapi.DeviceTaintEffectNoSchedule,
			})),
			want: []string{"GPUTenant " + tenant.Name, "request gpu", "tenancy taint"},
		},
		// ns lacks DRA's admin-access label: the API server refuses before
		// any policy speaks.
		"admin access without the namespace's admin label": {spec: claimSpec(adminAccess), want: []string{"admin access", tenancyv1.LabelAdminAccess}},
		"tolerating the health taint is fine":              {spec: claimSpec(tolerating(gpuapi.TaintKeyUnhealthy, resourceapi.DeviceTolerationOpExists))},
		"a claim of no devices is fine":                    {spec: claimSpec()},
	} {
		t.Run(name, func(t *testing.T) {
			err := createClaim(testContext(t), ns, tc.spec)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("allowed claim refused: %v", err)
				}
				return
			}
			wantRefused(t, err, tc.want...)
		})
	}

	t.Run("admin access", func(t *testing.T) {
		// The namespace has DRA's admin-access label (set by an admin), so
		// only the tenant policy stands in the way.
		wantRefused(t, createClaim(testContext(t), adminNS, claimSpec(adminAccess)), "GPUTenant "+tenant.Name, "request gpu", "admin access")
	})

	t.Run("a template with a forbidden class", func(t *testing.T) {
		_, err := local.Client.ResourceV1().ResourceClaimTemplates(ns).Create(testContext(t), &resourceapi.ResourceClaimTemplate{
			ObjectMeta: metav1.ObjectMeta{Name: "attack", Namespace: ns},
			Spec:       resourceapi.ResourceClaimTemplateSpec{Spec: claimSpec(builder.MakeRequest("gpu", gpuapi.ClassGPU).Obj())},
		}, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		wantRefused(t, err, "GPUTenant "+tenant.Name, "request gpu", "DeviceClass gpu.tessera.dev")
	})

	// A namespace of no tenant names another tenant's
	// dedicated class; refused by the API server, and by the controller
	// where the policy is not in place.
	t.Run("a dedicated class from a namespace of no tenant", func(t *testing.T) {
		attackDedicatedFromOutside(testContext(t), t, other, outside)
	})
	t.Run("a node publishing a dedicated pool it is not labelled for", func(t *testing.T) {
		attackForgedPool(testContext(t), t, other, victim)
	})
	t.Run("a node publishing a pool named after another node", func(t *testing.T) {
		attackForeignPoolSlice(testContext(t), t)
	})
	t.Run("a kubelet relabelling a node's pool", func(t *testing.T) {
		attackKubeletNodeLabel(testContext(t), t)
	})
	t.Run("a node under-reporting its GPUs' memory", func(t *testing.T) {
		attackUnderReportedMemory(testContext(t), t, wholeTenant, wholeNS)
	})
	t.Run("a forbidden class through the beta API", func(t *testing.T) {
		attackBetaAPI(testContext(t), t, tenant, ns)
	})
	t.Run("a dedicated class from a namespace of no tenant, policy deleted", func(t *testing.T) {
		attackDedicatedUnbound(testContext(t), t, other, unbound)
	})
	// Items 4 and 5: tolerating a tenant's sharing taint from outside, and
	// churning the free taints with claims that do not tolerate them.
	t.Run("a tenant's taint from a namespace of no tenant", func(t *testing.T) {
		attackTaintFromOutside(testContext(t), t, tenant, other, outside)
	})
	t.Run("free taints under a claim loop", func(t *testing.T) {
		attackFreeRules(testContext(t), t, churn)
	})
	// The cost rule: what a tenant's shares keep from others is what its
	// budget counts, and what kubectl get gput shows.
	t.Run("shares of mixed shape priced by what they deny", func(t *testing.T) {
		attackMixedShares(testContext(t), t, mixedTenant, mixedNS)
	})
	t.Run("tiny shares holding whole GPUs", func(t *testing.T) {
		attackTinyShares(testContext(t), t, tinyTenant, tinyNS)
	})
	t.Run("devices through an extended resource", func(t *testing.T) {
		attackExtendedResource(testContext(t), t, extendedNS)
	})
	t.Run("shares through an extended resource on GPUs without the free taint", func(t *testing.T) {
		// The controller may take the free taints off only a minute after
		// it last did.
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
		defer cancel()
		attackExtendedSharesUntainted(ctx, t, extSharesTenant, extSharesNS, beforePolicies)
	})
	t.Run("admin access to a MIG partition and a share", func(t *testing.T) {
		attackAdminAccessDevices(testContext(t), t, adminAccessNS, bystanderNS)
	})
	t.Run("a flood of over-budget claims delaying another tenant", func(t *testing.T) {
		attackFlood(testContext(t), t, floodNS, steadyNS)
	})

	t.Run("a namespace selected by two tenants", func(t *testing.T) {
		ctx := testContext(t)
		second := newTenant(t, "second", tenancyv1.GPUTenantSpec{AllowedDeviceClasses: []string{gpuapi.ClassMIG}})
		labelNamespace(t, shared, map[string]string{"e2e.tessera.dev/second": "yes"})
		updateTenant(t, second.Name, func(s *tenancyv1.GPUTenant) {
			s.Spec.NamespaceSelector = metav1.LabelSelector{MatchLabels: map[string]string{"e2e.tessera.dev/second": "yes"}}
		})
		for _, name := range []string{tenant.Name, second.Name} {
			waitTenantCondition(t, name, tenancyv1.TenantConflict, metav1.ConditionTrue)
		}
		// Both tenants allow MIG; the claim is refused anyway.
		err := wait.PollUntilContextTimeout(ctx, pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
			return createClaim(ctx, shared, claimSpec(migRequest("gpu"))) != nil, nil
		})
		if err != nil {
			t.Fatal("a claim in a namespace of two tenants is still accepted")
		}
		wantRefused(t, createClaim(ctx, shared, claimSpec(migRequest("gpu"))), "selected by more than one GPUTenant")
	})

	t.Run("tenancy labels", func(t *testing.T) {
		ctx := testContext(t)
		mallory := namespaceEditor(t)
		for name, tc := range map[string]struct {
			ns     string
			labels map[string]string // nil value: remove
			want   string
		}{
			"move a namespace to another tenant": {ns: ns, labels: map[string]string{tenancyv1.LabelCapsuleTenant: other.Name}, want: tenancyv1.LabelCapsuleTenant},
			"take a namespace out of its tenant": {ns: victim, labels: map[string]string{tenancyv1.LabelCapsuleTenant: ""}, want: tenancyv1.LabelCapsuleTenant},
			"join a tenant":                      {ns: free, labels: map[string]string{tenancyv1.LabelCapsuleTenant: tenant.Name}, want: tenancyv1.LabelCapsuleTenant},
			"grant DRA admin access":             {ns: ns, labels: map[string]string{tenancyv1.LabelAdminAccess: "true"}, want: tenancyv1.LabelAdminAccess},
			"set a tenancy label":                {ns: free, labels: map[string]string{tenancyv1.LabelTenant: "x"}, want: tenancyv1.LabelTenant},
			"an unrelated label is fine":         {ns: ns, labels: map[string]string{"team": "blue"}},
		} {
			t.Run(name, func(t *testing.T) {
				n, err := mallory.CoreV1().Namespaces().Get(ctx, tc.ns, metav1.GetOptions{})
				if err != nil {
					t.Fatal(err)
				}
				for k, v := range tc.labels {
					if v == "" {
						delete(n.Labels, k)
					} else {
						n.Labels[k] = v
					}
				}
				_, err = mallory.CoreV1().Namespaces().Update(ctx, n, metav1.UpdateOptions{DryRun: []string{metav1.DryRunAll}})
				if tc.want == "" {
					if err != nil {
						t.Fatalf("refused: %v", err)
					}
					return
				}
				wantRefused(t, err, tc.want)
			})
		}
		t.Run("create a namespace labelled into a tenant", func(t *testing.T) {
			_, err := mallory.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
				Name: "mallory-ns", Labels: map[string]string{tenancyv1.LabelCapsuleTenant: tenant.Name},
			}}, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
			wantRefused(t, err, tenancyv1.LabelCapsuleTenant)
		})
		t.Run("through subresources", func(t *testing.T) {
			attackLabelsThroughSubresources(ctx, t, mallory, ns, other)
		})
		t.Run("an admin may relabel", func(t *testing.T) {
			n, err := local.Client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			n.Labels[tenancyv1.LabelCapsuleTenant] = other.Name
			if _, err := local.Client.CoreV1().Namespaces().Update(ctx, n, metav1.UpdateOptions{DryRun: []string{metav1.DryRunAll}}); err != nil {
				t.Fatalf("admin refused: %v", err)
			}
		})
	})
}

// namespaceEditor is a client for a user who may create, edit and label
// namespaces (their status and finalize subresources too) and create
// claims, but is no cluster admin.
func namespaceEditor(t *testing.T) kubernetes.Interface {
	t.Helper()
	ctx := t.Context()
	const user = "e2e-mallory"
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: user},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"namespaces"}, Verbs: []string{"get", "list", "create", "update", "patch"}},
			// Common in namespace-admin roles.
			{APIGroups: []string{""}, Resources: []string{"namespaces/status", "namespaces/finalize"}, Verbs: []string{"update", "patch"}},
			{APIGroups: []string{"resource.k8s.io"}, Resources: []string{"resourceclaims", "resourceclaimtemplates"}, Verbs: []string{"get", "create"}},
		},
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: user},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: user},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: user}},
	}
	_, err := local.Client.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = local.Client.RbacV1().ClusterRoles().Delete(context.Background(), user, metav1.DeleteOptions{})
	})
	if _, err := local.Client.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = local.Client.RbacV1().ClusterRoleBindings().Delete(context.Background(), user, metav1.DeleteOptions{})
	})
	cfg := rest.CopyConfig(local.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: user}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// RBAC is cached by the authorizer; wait until the role takes effect.
	err = wait.PollUntilContextTimeout(ctx, pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		_, err := client.CoreV1().Namespaces().List(ctx, metav1.ListOptions{Limit: 1})
		return err == nil, nil
	})
	if err != nil {
		t.Fatal("namespace editor role never took effect")
	}
	return client
}

// TestTenancyCRDValidation checks the GPUTenant CRD's rules in the API server.
func TestTenancyCRDValidation(t *testing.T) {
	needCluster(t)
	ctx := testContext(t)
	selector := metav1.LabelSelector{MatchLabels: map[string]string{tenancyv1.LabelCapsuleTenant: "x"}}
	for name, tc := range map[string]struct {
		tenant tenancyv1.GPUTenant
		want   string
	}{
		"a name with a dot": {
			tenant: tenancyv1.GPUTenant{ObjectMeta: metav1.ObjectMeta{Name: "team.a"}, Spec: tenancyv1.GPUTenantSpec{NamespaceSelector: selector}},
			want:   "must be a DNS label",
		},
		"an empty selector": {
			tenant: tenancyv1.GPUTenant{ObjectMeta: metav1.ObjectMeta{Name: "empty"}},
			want:   "namespaceSelector must select by at least one label",
		},
		"the default pool": {
			tenant: tenancyv1.GPUTenant{ObjectMeta: metav1.ObjectMeta{Name: "greedy"}, Spec: tenancyv1.GPUTenantSpec{NamespaceSelector: selector, DedicatedPool: gpuapi.PoolDefault}},
			want:   "cannot be dedicated",
		},
		"a negative budget": {
			tenant: tenancyv1.GPUTenant{ObjectMeta: metav1.ObjectMeta{Name: "negative"}, Spec: tenancyv1.GPUTenantSpec{NamespaceSelector: selector,
				Budget: &tenancyv1.Budget{Devices: map[string]int64{gpuapi.ClassMIG: -1}}}},
			want: "must not be negative",
		},
	} {
		t.Run(name, func(t *testing.T) {
			err := tenants.Create(ctx, &tc.tenant, crclient.DryRunAll)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

// TestTenancyUntenantedDeny runs the controller with --untenanted=deny: a
// namespace of no tenant may not use Tessera's classes, a tenant's namespace
// may; back to the default, it may again.
func TestTenancyUntenantedDeny(t *testing.T) {
	tenant := newTenant(t, "denied", tenancyv1.GPUTenantSpec{AllowedDeviceClasses: []string{gpuapi.ClassMIG}})
	ns := tenantNamespace(t, tenant.Name)
	free := newNamespace(t)
	ctx := testContext(t)
	if err := tenancyController.Restart(ctx, "--untenanted=deny"); err != nil {
		t.Fatal(err)
	}
	denying := true
	t.Cleanup(func() {
		if denying {
			if err := tenancyController.Restart(context.Background()); err != nil {
				t.Errorf("restart controller with defaults: %v", err)
			}
		}
	})
	err := wait.PollUntilContextTimeout(ctx, pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		return createClaim(ctx, free, claimSpec(migRequest("gpu"))) != nil, nil
	})
	if err != nil {
		t.Fatal("a namespace of no tenant may still use Tessera's classes")
	}
	wantRefused(t, createClaim(ctx, free, claimSpec(migRequest("gpu"))), "namespace "+free+" belongs to no GPUTenant", "request gpu")
	if err := createClaim(ctx, free, claimSpec()); err != nil {
		t.Errorf("a claim of no devices is refused: %v", err)
	}
	if err := createClaim(ctx, ns, claimSpec(migRequest("gpu"))); err != nil {
		t.Errorf("the tenant's own namespace is refused: %v", err)
	}
	other := claimSpec(builder.MakeRequest("gpu", "other.example.com").Obj())
	if err := createClaim(ctx, free, other); err != nil && strings.Contains(err.Error(), "belongs to no GPUTenant") {
		t.Errorf("a class of another driver is refused: %v", err)
	}

	if err := tenancyController.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	denying = false
	err = wait.PollUntilContextTimeout(ctx, pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		return createClaim(ctx, free, claimSpec(migRequest("gpu"))) == nil, nil
	})
	if err != nil {
		t.Error("with --untenanted=allow, a namespace of no tenant is still refused")
	}
}
