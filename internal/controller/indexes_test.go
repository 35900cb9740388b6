package controller

import (
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
)

// withIndexes gives a fake client the cache's indexes (addIndexes).
func withIndexes(b *fake.ClientBuilder) *fake.ClientBuilder {
	for _, i := range cacheIndexes {
		b = b.WithIndex(i.obj, i.field, i.extract)
	}
	return b
}

// TestTenantNamespacesThroughTheLabelIndex: whatever a tenant's selector, the
// namespaces found through the label index are those the selector matches.
func TestTenantNamespacesThroughTheLabelIndex(t *testing.T) {
	ns := func(name string, labels map[string]string) client.Object {
		return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	}
	objs := []client.Object{
		ns("x1", map[string]string{"team": "x"}), ns("x2", map[string]string{"team": "x", "env": "prod"}),
		ns("y1", map[string]string{"team": "y"}), ns("none", nil), ns("other", map[string]string{"env": "dev"}),
	}
	for name, tc := range map[string]struct {
		selector metav1.LabelSelector
		want     []string
	}{
		"matchLabels":  {metav1.LabelSelector{MatchLabels: map[string]string{"team": "x"}}, []string{"x1", "x2"}},
		"two labels":   {metav1.LabelSelector{MatchLabels: map[string]string{"team": "x", "env": "prod"}}, []string{"x2"}},
		"in":           {metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "team", Operator: metav1.LabelSelectorOpIn, Values: []string{"x", "y"}}}}, []string{"x1", "x2", "y1"}},
		"exists":       {metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "env", Operator: metav1.LabelSelectorOpExists}}}, []string{"other", "x2"}},
		"notIn only":   {metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "team", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"x"}}}}, []string{"none", "other", "y1"}},
		"doesNotExist": {metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "team", Operator: metav1.LabelSelectorOpDoesNotExist}}}, []string{"none", "other"}},
	} {
		t.Run(name, func(t *testing.T) {
			scheme, err := Scheme()
			if err != nil {
				t.Fatal(err)
			}
			c := withIndexes(fake.NewClientBuilder()).WithScheme(scheme).WithObjects(objs...).Build()
			tenant := &tenancyv1.GPUTenant{ObjectMeta: metav1.ObjectMeta{Name: "t"}, Spec: tenancyv1.GPUTenantSpec{NamespaceSelector: tc.selector}}
			own, _, err := tenantNamespaces(t.Context(), c, tenant, []*tenancyv1.GPUTenant{tenant})
			if err != nil {
				t.Fatal(err)
			}
			slices.Sort(own)
			if diff := cmp.Diff(tc.want, own); diff != "" {
				t.Errorf("namespaces (-want +got):\n%s", diff)
			}
		})
	}
}
