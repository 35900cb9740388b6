package controller

import (
	"context"
	"fmt"
	"slices"
	"sync"

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
// Like the budget ledger, it remembers the shares it admitted until the cache
// shows them admitted, so that a decision right after another never misses
// the first one's holder.
type sharingGuard struct {
	mu       sync.Mutex
	admitted map[types.NamespacedName]sharingEntry
}

type sharingEntry struct {
	uid    types.UID
	holder tenancy.ShareHolder
}

func newSharingGuard() *sharingGuard {
	return &sharingGuard{admitted: map[types.NamespacedName]sharingEntry{}}
}

// check refuses d (turning it into a rejection) when the claim, of tenant t
// (nil: of no tenant), holds a share of a GPU that another group holds.
func (g *sharingGuard) check(ctx context.Context, c client.Reader, claim *resourceapi.ResourceClaim, t *tenancyv1.GPUTenant, d tenancy.Decision) (tenancy.Decision, error) {
	if !d.Admit || len(tenancy.SharedDevices(claim)) == 0 {
		return d, nil
	}
	holders, err := g.holders(ctx, c, claim)
	if err != nil {
		return d, err
	}
	if msg := tenancy.SharingConflict(tenancy.SharingGroup(t), claim, tenancy.Holders(holders)); msg != "" {
		return tenancy.Decision{Reason: tenancyv1.ReasonSharedWithOtherTenant, Message: msg, Cost: d.Cost}, nil
	}
	return d, nil
}

// admit remembers an admitted claim's shares until the cache shows them.
func (g *sharingGuard) admit(claim *resourceapi.ResourceClaim, t *tenancyv1.GPUTenant) {
	devices := tenancy.SharedDevices(claim)
	if len(devices) == 0 {
		return
	}
	key := client.ObjectKeyFromObject(claim)
	g.mu.Lock()
	defer g.mu.Unlock()
	g.admitted[key] = sharingEntry{uid: claim.UID, holder: tenancy.ShareHolder{Claim: key, Group: tenancy.SharingGroup(t), Devices: devices}}
}

// holders are the claims other than claim that hold shares of the GPUs it
// holds shares of: those the cache shows admitted or allocated without a
// gate (indexClaimDevice: only the claims allocated those GPUs are read),
// and those this guard admitted that the cache still shows pending. Entries
// the cache has caught up with (admitted, released, gone) are dropped.
func (g *sharingGuard) holders(ctx context.Context, c client.Reader, claim *resourceapi.ResourceClaim) ([]tenancy.ShareHolder, error) {
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
	g.mu.Lock()
	defer g.mu.Unlock()
	for key, e := range g.admitted {
		cl := &resourceapi.ResourceClaim{}
		err := c.Get(ctx, key, cl)
		if err != nil && !apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("get claim %s: %w", key, err)
		}
		if err != nil || cl.UID != e.uid || tenancy.ClaimState(cl) != tenancy.Pending {
			delete(g.admitted, key)
			continue
		}
		if key != skip {
			out = append(out, e.holder)
		}
	}
	return out, nil
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
