package controller

import (
	"context"
	"fmt"
	"slices"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

// sharingGuard is the allocation-time check that no time-shared GPU serves two
// sharing groups (tenants) at once. The device taint keeps the scheduler from
// trying, but two claims of different tenants can be allocated shares of one
// fresh GPU before any taint exists; the guard, asked before every admission
// and deciding one claim at a time, admits the first and rejects the other
// (the scheduler then retries it elsewhere, by then kept off by the taint).
//
// The shares it admitted are remembered with the admission in the ledger
// (shares, ledger.pendingShares) until the cache shows them admitted, so that
// a decision right after another never misses the first one's holder.
type sharingGuard struct{}

func newSharingGuard() *sharingGuard {
	return &sharingGuard{}
}

// check refuses d (turning it into a rejection) when the claim, of tenant t
// (nil: of no tenant), holds a share of a GPU that another group holds,
// as the cache or the ledger l shows it.
func (g *sharingGuard) check(ctx context.Context, c client.Reader, l *ledger, claim *resourceapi.ResourceClaim, t *tenancyv1.GPUTenant, d tenancy.Decision) (tenancy.Decision, error) {
	if !d.Admit || len(tenancy.SharedDevices(claim)) == 0 {
		return d, nil
	}
	holders, err := g.holders(ctx, c, l, claim)
	if err != nil {
		return d, err
	}
	if msg := tenancy.SharingConflict(tenancy.SharingGroup(t), claim, tenancy.Holders(holders)); msg != "" {
		return tenancy.Decision{Reason: tenancyv1.ReasonSharedWithOtherTenant, Message: msg, Cost: d.Cost}, nil
	}
	return d, nil
}

// shares are an admitted claim's shares of time-shared GPUs, for the ledger
// to remember until the cache shows them, or nil if it holds none.
func (g *sharingGuard) shares(claim *resourceapi.ResourceClaim, t *tenancyv1.GPUTenant) *tenancy.ShareHolder {
	devices := tenancy.SharedDevices(claim)
	if len(devices) == 0 {
		return nil
	}
	return &tenancy.ShareHolder{Claim: client.ObjectKeyFromObject(claim), Group: tenancy.SharingGroup(t), Devices: devices}
}

// holders are the claims other than claim that hold shares of the GPUs it
// holds shares of: those the cache shows admitted or allocated without a
// gate (indexClaimDevice: only the claims allocated those GPUs are read),
// and those admitted that the cache still shows pending (ledger.pendingShares).
func (g *sharingGuard) holders(ctx context.Context, c client.Reader, l *ledger, claim *resourceapi.ResourceClaim) ([]tenancy.ShareHolder, error) {
	skip := client.ObjectKeyFromObject(claim)
	groups := namespaceGroups{reader: c, groups: map[string]string{}}
	seen := map[types.NamespacedName]bool{skip: true}
	var out []tenancy.ShareHolder
	for _, d := range tenancy.SharedDevices(claim) {
		var list resourceapi.ResourceClaimList
		if err := c.List(ctx, &list, client.MatchingFields{indexClaimDevice: deviceKey(d)}); err != nil {
			return nil, fmt.Errorf("list claims of %s: %w", deviceKey(d), err)
		}
		for i := range list.Items {
			cl := &list.Items[i]
			key := client.ObjectKeyFromObject(cl)
			devices := tenancy.SharedDevices(cl)
			if seen[key] || len(devices) == 0 || !slices.Contains([]tenancy.State{tenancy.Admitted, tenancy.Ungated}, tenancy.ClaimState(cl)) {
				continue
			}
			seen[key] = true
			group, err := groups.of(ctx, cl.Namespace)
			if err != nil {
				return nil, err
			}
			out = append(out, tenancy.ShareHolder{Claim: key, Group: group, Devices: devices})
		}
	}
	pending, err := l.pendingShares(ctx, c, skip)
	if err != nil {
		return nil, err
	}
	return append(out, pending...), nil
}

// namespaceGroups finds the sharing group of a namespace's claims, reading
// only that namespace and the tenants. A namespace that two tenants select
// counts for the first of them, as in shareHolders.
type namespaceGroups struct {
	reader  client.Reader
	tenants []*tenancyv1.GPUTenant
	groups  map[string]string
}

func (n *namespaceGroups) of(ctx context.Context, namespace string) (string, error) {
	if g, ok := n.groups[namespace]; ok {
		return g, nil
	}
	if n.tenants == nil {
		tenants, err := listTenants(ctx, n.reader)
		if err != nil {
			return "", err
		}
		n.tenants = tenants
	}
	var t *tenancyv1.GPUTenant
	ns := &corev1.Namespace{}
	switch err := n.reader.Get(ctx, types.NamespacedName{Name: namespace}, ns); {
	case apierrors.IsNotFound(err):
	case err != nil:
		return "", fmt.Errorf("get namespace %s: %w", namespace, err)
	default:
		// A tenant whose selector does not parse selects nothing.
		owners, _ := tenancy.Owners(n.tenants, []*corev1.Namespace{ns})
		if o := owners[namespace]; len(o) > 0 {
			t = findTenant(n.tenants, o[0])
		}
	}
	n.groups[namespace] = tenancy.SharingGroup(t)
	return n.groups[namespace], nil
}

// shareHolders are the claims in one of the given states that hold shares of
// time-shared GPUs, each with its sharing group. A claim in a namespace that
// two tenants select counts for the first of them (such claims are refused
// anyway; what they still hold keeps other tenants off).
func shareHolders(ctx context.Context, c client.Reader, states ...tenancy.State) ([]tenancy.ShareHolder, error) {
	var claims resourceapi.ResourceClaimList
	if err := c.List(ctx, &claims); err != nil {
		return nil, fmt.Errorf("list claims: %w", err)
	}
	tenants, err := listTenants(ctx, c)
	if err != nil {
		return nil, err
	}
	var namespaces []*corev1.Namespace
	var out []tenancy.ShareHolder
	var owners map[string][]string
	for i := range claims.Items {
		cl := &claims.Items[i]
		devices := tenancy.SharedDevices(cl)
		if len(devices) == 0 || !slices.Contains(states, tenancy.ClaimState(cl)) {
			continue
		}
		if owners == nil {
			if namespaces, err = listNamespaces(ctx, c); err != nil {
				return nil, err
			}
			// A tenant whose selector does not parse selects nothing.
			owners, _ = tenancy.Owners(tenants, namespaces)
		}
		var t *tenancyv1.GPUTenant
		if o := owners[cl.Namespace]; len(o) > 0 {
			t = findTenant(tenants, o[0])
		}
		out = append(out, tenancy.ShareHolder{Claim: client.ObjectKeyFromObject(cl), Group: tenancy.SharingGroup(t), Devices: devices})
	}
	return out, nil
}
