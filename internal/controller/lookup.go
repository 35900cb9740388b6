package controller

import (
	"context"
	"fmt"
	"maps"
	"slices"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

func ptrs[T any](items []T) []*T {
	out := make([]*T, len(items))
	for i := range items {
		out[i] = &items[i]
	}
	return out
}

func listTenants(ctx context.Context, c client.Reader) ([]*tenancyv1.GPUTenant, error) {
	var list tenancyv1.GPUTenantList
	if err := c.List(ctx, &list); err != nil {
		return nil, fmt.Errorf("list GPUTenants: %w", err)
	}
	return ptrs(list.Items), nil
}

func listNamespaces(ctx context.Context, c client.Reader) ([]*corev1.Namespace, error) {
	var list corev1.NamespaceList
	if err := c.List(ctx, &list); err != nil {
		return nil, fmt.Errorf("list namespaces: %w", err)
	}
	return ptrs(list.Items), nil
}

// tenantedNamespaces lists the namespaces exactly one tenant selects: the
// ones the untenanted bindings leave out.
func tenantedNamespaces(ctx context.Context, c client.Reader) ([]string, error) {
	tenants, err := listTenants(ctx, c)
	if err != nil {
		return nil, err
	}
	namespaces, err := listNamespaces(ctx, c)
	if err != nil {
		return nil, err
	}
	owners, _ := tenancy.Owners(tenants, namespaces)
	return slices.Collect(maps.Keys(owners)), nil
}

func findTenant(tenants []*tenancyv1.GPUTenant, name string) *tenancyv1.GPUTenant {
	for _, t := range tenants {
		if t.Name == name {
			return t
		}
	}
	return nil
}

// tenantNamespaces are the namespaces t selects, each with all its owners.
// Only the namespaces t's selector may match are read (candidateNamespaces).
func tenantNamespaces(ctx context.Context, c client.Reader, t *tenancyv1.GPUTenant, tenants []*tenancyv1.GPUTenant) (own, conflicting []string, err error) {
	namespaces, err := candidateNamespaces(ctx, c, t)
	if err != nil {
		return nil, nil, err
	}
	owners, _ := tenancy.Owners(tenants, namespaces)
	own, conflicting = tenancy.TenantNamespaces(t.Name, owners)
	return own, conflicting, nil
}

// admittedClaims are the admitted claims, as the cache shows them, in every
// namespace t selects: only those (indexClaimAdmitted), not every claim of
// those namespaces.
func admittedClaims(ctx context.Context, c client.Reader, t *tenancyv1.GPUTenant, tenants []*tenancyv1.GPUTenant) ([]*resourceapi.ResourceClaim, error) {
	own, conflicting, err := tenantNamespaces(ctx, c, t, tenants)
	if err != nil {
		return nil, err
	}
	var out []*resourceapi.ResourceClaim
	for _, ns := range append(own, conflicting...) {
		var list resourceapi.ResourceClaimList
		if err := c.List(ctx, &list, client.InNamespace(ns), client.MatchingFields{indexClaimAdmitted: "true"}); err != nil {
			return nil, fmt.Errorf("list admitted claims in %s: %w", ns, err)
		}
		out = append(out, ptrs(list.Items)...)
	}
	return out, nil
}
