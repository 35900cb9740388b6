package tessera

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	coordinationv1 "k8s.io/api/coordination/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apiserver/pkg/admission"
	"k8s.io/apiserver/pkg/authentication/user"

	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
)

// TestIdleReportPolicy: the plugin's account may write the idle-report
// Lease of its own node only, so that no node can report another node's
// claims idle; other users are not the policy's concern.
func TestIdleReportPolicy(t *testing.T) {
	policy := deniedPolicy(t, "tessera-kubelet-plugin-idle-report")
	lease := func(name string) *coordinationv1.Lease {
		return &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "tessera-system"}}
	}
	gvr := coordinationv1.SchemeGroupVersion.WithResource("leases")
	tests := map[string]struct {
		user     user.Info
		op       admission.Operation
		obj, old *coordinationv1.Lease
		allowed  bool
	}{
		"its node's report":                 {pluginOnNode("n1"), admission.Create, lease(tenancyv1.IdleReportName("n1")), nil, true},
		"its node's report, updated":        {pluginOnNode("n1"), admission.Update, lease(tenancyv1.IdleReportName("n1")), lease(tenancyv1.IdleReportName("n1")), true},
		"another node's report":             {pluginOnNode("n1"), admission.Create, lease(tenancyv1.IdleReportName("n2")), nil, false},
		"another node's report, updated":    {pluginOnNode("n1"), admission.Update, lease(tenancyv1.IdleReportName("n2")), lease(tenancyv1.IdleReportName("n2")), false},
		"the controller's election Lease":   {pluginOnNode("n1"), admission.Update, lease("tessera-dra-controller"), lease("tessera-dra-controller"), false},
		"a token without node":              {pluginOnNode(""), admission.Create, lease(tenancyv1.IdleReportName("n1")), nil, false},
		"another user, another node's name": {&user.DefaultInfo{Name: "system:node:n2"}, admission.Create, lease(tenancyv1.IdleReportName("n1")), nil, true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var old runtime.Object // not a typed nil
			if tc.old != nil {
				old = tc.old
			}
			matched, denials := admitsUser(t, policy, tc.user, tc.op, gvr, "Lease", tc.obj, old)
			if allowed := !matched || len(denials) == 0; allowed != tc.allowed {
				t.Errorf("allowed = %v, want %v (denials %q)", allowed, tc.allowed, denials)
			}
		})
	}
}

// TestIdleReportsFollowIdleAfter: the plugins publish idle reports, and may
// write Leases, only when the controller marks idle claims.
func TestIdleReportsFollowIdleAfter(t *testing.T) {
	for name, tc := range map[string]struct {
		args  []string
		rules []rbacv1.PolicyRule
	}{
		"off by default": {},
		"zero":           {args: []string{"--set", "controller.idleAfter=0m"}},
		"on": {args: []string{"--set", "controller.idleAfter=2h"}, rules: []rbacv1.PolicyRule{
			{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"get", "create", "patch"}},
		}},
	} {
		t.Run(name, func(t *testing.T) {
			manifest, err := render(t, tc.args...)
			if err != nil {
				t.Fatal(err)
			}
			var rules []rbacv1.PolicyRule
			for _, r := range find[*rbacv1.Role](objects(t, manifest)) {
				if r.Name == "tessera-kubelet-plugin-idle-report" {
					rules = append(rules, r.Rules...)
				}
			}
			if diff := cmp.Diff(tc.rules, rules); diff != "" {
				t.Errorf("the plugin's rules on Leases (-want +got):\n%s", diff)
			}
		})
	}
}
