package tessera

import (
	"slices"
	"testing"

	admissionv1 "k8s.io/api/admissionregistration/v1"
)

// TestPoliciesSeeV1Objects: every admission policy of the chart that
// matches DRA's API (claims, templates, slices, classes, taint rules) matches
// its v1 version with matchPolicy Equivalent, so that a request sent in
// v1beta1 or v1beta2 (served where an admin turns them on) is converted to
// v1 before the policy's expressions read it. With apiVersions "*" the
// policy would see a v1beta1 claim unconverted: its requests carry
// deviceClassName with no "exactly", and the claims policies' class,
// admin-access and toleration checks would find nothing to refuse.
func TestPoliciesSeeV1Objects(t *testing.T) {
	manifest, err := render(t, "--set", "kubeletPlugin.tenancy=true")
	if err != nil {
		t.Fatal(err)
	}
	objs := objects(t, manifest)
	type policy struct {
		name        string
		constraints *admissionv1.MatchResources
	}
	var policies []policy
	for _, p := range find[*admissionv1.ValidatingAdmissionPolicy](objs) {
		policies = append(policies, policy{"ValidatingAdmissionPolicy " + p.Name, p.Spec.MatchConstraints})
	}
	for _, p := range find[*admissionv1.MutatingAdmissionPolicy](objs) {
		policies = append(policies, policy{"MutatingAdmissionPolicy " + p.Name, p.Spec.MatchConstraints})
	}
	checked := 0
	for _, p := range policies {
		if p.constraints == nil {
			continue
		}
		dra := false
		for _, r := range p.constraints.ResourceRules {
			if !slices.Contains(r.APIGroups, "resource.k8s.io") {
				continue
			}
			dra = true
			if !slices.Equal(r.APIVersions, []string{"v1"}) {
				t.Errorf("%s matches resource.k8s.io %v in versions %v, want [v1]", p.name, r.Resources, r.APIVersions)
			}
		}
		if !dra {
			continue
		}
		checked++
		if p.constraints.MatchPolicy == nil || *p.constraints.MatchPolicy != admissionv1.Equivalent {
			t.Errorf("%s matches DRA's API without matchPolicy Equivalent: requests in a beta version would not be converted to v1", p.name)
		}
	}
	if checked == 0 {
		t.Fatal("no policy of the chart matches resource.k8s.io")
	}
}
