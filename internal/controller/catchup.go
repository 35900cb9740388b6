package controller

import (
	"context"
	"fmt"
	"sync"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

// leaderCatchUp makes a new leader count every admission its predecessor
// wrote before it decides anything.
//
// The manager starts the caches on every replica, leader or not, and the
// reconcilers once this one is elected; the caches are synced by then, but a
// watch can lag: a standby's cache may not yet show the old leader's last
// admissions, and a decision read from it would count the tenant's usage
// short and overshoot the budget. So, before its first decision, the new
// leader lists the claims from the API server itself (a quorum read, which
// holds every write the old leader completed) and enters each admitted one
// in the ledger, which counts it until the cache shows it (ledger.unseen).
// The old leader stops deciding before its lease can be taken (its renew
// deadline is shorter than the lease), and on a graceful stop releases the
// lease only after its reconcilers returned.
type leaderCatchUp struct {
	// reader reads from the API server, not the cache.
	reader client.Reader

	mu   sync.Mutex
	done bool
}

// ensure enters the API server's admitted claims in l once; until it has
// succeeded, every call tries again and no decision may be made.
func (c *leaderCatchUp) ensure(ctx context.Context, cache client.Reader, l *ledger, catalog *deviceCatalog) error {
	if c == nil || c.reader == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done {
		return nil
	}
	var list resourceapi.ResourceClaimList
	if err := c.reader.List(ctx, &list); err != nil {
		return fmt.Errorf("list the admitted claims from the API server before the first decision: %w", err)
	}
	var admitted []*resourceapi.ResourceClaim
	namespaces := map[string]*corev1.Namespace{}
	for i := range list.Items {
		claim := &list.Items[i]
		if tenancy.ClaimState(claim) != tenancy.Admitted {
			continue
		}
		admitted = append(admitted, claim)
		if _, ok := namespaces[claim.Namespace]; ok {
			continue
		}
		ns := &corev1.Namespace{}
		if err := cache.Get(ctx, types.NamespacedName{Name: claim.Namespace}, ns); err != nil {
			return fmt.Errorf("get namespace of admitted claim %s: %w", klog.KObj(claim), err)
		}
		namespaces[claim.Namespace] = ns
	}
	tenants, err := listTenants(ctx, cache)
	if err != nil {
		return err
	}
	nsList := make([]*corev1.Namespace, 0, len(namespaces))
	for _, ns := range namespaces {
		nsList = append(nsList, ns)
	}
	owners, _ := tenancy.Owners(tenants, nsList)
	memory, err := catalog.costing(ctx, cache, admitted)
	if err != nil {
		return err
	}
	seeded := 0
	for _, claim := range admitted {
		o := owners[claim.Namespace]
		if len(o) == 0 {
			continue // no tenant's budget to count it in
		}
		holdings, err := tenancy.ClaimHoldings(claim, memory)
		if err != nil {
			// Counting it short could overshoot: refuse to decide.
			return fmt.Errorf("usage of admitted claim %s: %w", klog.KObj(claim), err)
		}
		l.seed(client.ObjectKeyFromObject(claim), claim.UID, o, holdings)
		seeded++
	}
	klog.FromContext(ctx).Info("Counting the admissions the API server holds before deciding", "admitted", seeded)
	c.done = true
	return nil
}
