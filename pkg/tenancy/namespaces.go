package tenancy

import (
	"errors"
	"fmt"
	"slices"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
)

// Owners maps every namespace that some tenant selects to the names of the
// tenants that select it, sorted. A namespace with two or more owners is in
// conflict. A tenant whose selector does not parse selects nothing and is
// returned in the error.
func Owners(tenants []*tenancyv1.GPUTenant, namespaces []*corev1.Namespace) (map[string][]string, error) {
	owners := map[string][]string{}
	var errs []error
	for _, t := range tenants {
		sel, err := Selector(t)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, ns := range namespaces {
			if sel.Matches(labels.Set(ns.Labels)) {
				owners[ns.Name] = append(owners[ns.Name], t.Name)
			}
		}
	}
	for _, o := range owners {
		slices.Sort(o)
	}
	return owners, errors.Join(errs...)
}

// Selector is the tenant's namespace selector. An empty selector would select
// every namespace; it is refused (the CRD refuses it too).
func Selector(t *tenancyv1.GPUTenant) (labels.Selector, error) {
	s := t.Spec.NamespaceSelector
	if len(s.MatchLabels) == 0 && len(s.MatchExpressions) == 0 {
		return nil, fmt.Errorf("GPUTenant %s: namespaceSelector selects every namespace", t.Name)
	}
	sel, err := metav1.LabelSelectorAsSelector(&s)
	if err != nil {
		return nil, fmt.Errorf("GPUTenant %s: namespaceSelector: %w", t.Name, err)
	}
	return sel, nil
}

// TenantNamespaces splits the namespaces a tenant selects into those it owns
// alone and those another tenant selects too, both sorted.
func TenantNamespaces(tenant string, owners map[string][]string) (own, conflicting []string) {
	for ns, o := range owners {
		if !slices.Contains(o, tenant) {
			continue
		}
		if len(o) == 1 {
			own = append(own, ns)
		} else {
			conflicting = append(conflicting, ns)
		}
	}
	slices.Sort(own)
	slices.Sort(conflicting)
	return own, conflicting
}
