package tessera

import (
	"slices"
	"testing"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	"k8s.io/apiserver/pkg/authentication/user"
)

// deniedPolicy returns the default install's ValidatingAdmissionPolicy of that
// name, failing the test unless it fails closed and a binding denies with it.
func deniedPolicy(t *testing.T, name string) *admissionv1.ValidatingAdmissionPolicy {
	t.Helper()
	manifest, err := render(t)
	if err != nil {
		t.Fatal(err)
	}
	objs := objects(t, manifest)
	var policy *admissionv1.ValidatingAdmissionPolicy
	for _, p := range find[*admissionv1.ValidatingAdmissionPolicy](objs) {
		if p.Name == name {
			policy = p
		}
	}
	if policy == nil {
		t.Fatalf("no ValidatingAdmissionPolicy %s", name)
	}
	if *policy.Spec.FailurePolicy != admissionv1.Fail {
		t.Errorf("policy %s must fail closed", name)
	}
	var bound bool
	for _, b := range find[*admissionv1.ValidatingAdmissionPolicyBinding](objs) {
		if b.Spec.PolicyName == policy.Name && slices.Contains(b.Spec.ValidationActions, admissionv1.Deny) {
			bound = true
		}
	}
	if !bound {
		t.Errorf("policy %s has no binding that denies", name)
	}
	return policy
}

// pluginOnNode is the kubelet plugin's account with a pod-bound token of node
// (no node: a token without the node-name extra).
func pluginOnNode(node string) user.Info {
	info := &user.DefaultInfo{Name: pluginUser}
	if node != "" {
		info.Extra = map[string][]string{"authentication.kubernetes.io/node-name": {node}}
	}
	return info
}
