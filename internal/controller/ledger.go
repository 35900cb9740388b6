package controller

import (
	"context"
	"fmt"
	"slices"
	"sync"

	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

// ledger is the one store of the admissions the cache does not show yet:
// this controller remembers each allocation it admitted (or, after a leader
// change, read from the API server: leaderCatchUp) until its cache shows it.
// Without it, a decision made right after another could read a cache that
// does not yet hold the first admission and count the tenant's usage short,
// letting two racing claims overshoot the budget (unseen), or miss the
// tenant that holds a time-shared GPU and let a second tenant share it
// (pendingShares). It also keeps, per tenant, the latest decision, for the
// tenant's status.
type ledger struct {
	mu       sync.Mutex
	admitted map[types.NamespacedName]ledgerEntry
	latest   map[string]tenancy.Decision
}

type ledgerEntry struct {
	uid types.UID
	// tenants are those whose budget it counts in: one, or several
	// where tenants conflict over its namespace.
	tenants []string
	// holdings, not a price: what a claim adds depends on what else the
	// tenant holds (shares of one GPU are priced together), so the tenant's
	// cost is recomputed from all its holdings on every decision.
	holdings []tenancy.Holding
	// shares are the claim's shares of time-shared GPUs, kept while the
	// cache shows the claim pending (pendingShares); nil: none, or the cache
	// has caught up.
	shares *tenancy.ShareHolder
}

func newLedger() *ledger {
	return &ledger{admitted: map[types.NamespacedName]ledgerEntry{}, latest: map[string]tenancy.Decision{}}
}

// record enters a decision: an admission with what it holds in tenant's
// budget and, when not nil, the shares of time-shared GPUs it holds.
func (l *ledger) record(claim types.NamespacedName, uid types.UID, tenant string, d tenancy.Decision, shares *tenancy.ShareHolder) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if d.Admit {
		l.admitted[claim] = ledgerEntry{uid: uid, tenants: []string{tenant}, holdings: d.Holdings, shares: shares}
	}
	l.latest[tenant] = d
}

// seed enters an admission this process did not make (a previous leader's,
// read from the API server), to be counted until the cache shows it.
func (l *ledger) seed(claim types.NamespacedName, uid types.UID, tenants []string, holdings []tenancy.Holding) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.admitted[claim]; !ok {
		l.admitted[claim] = ledgerEntry{uid: uid, tenants: tenants, holdings: holdings}
	}
}

// forget drops a claim once the cache shows it admitted, deallocated or gone.
func (l *ledger) forget(claim types.NamespacedName) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.admitted, claim)
}

// has reports whether the ledger holds an admission of claim.
func (l *ledger) has(claim types.NamespacedName) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, ok := l.admitted[claim]
	return ok
}

// unseen is what the tenant's admissions hold that the cache does not show
// yet: the holdings of entries of claims other than skip that are not in
// seen.
func (l *ledger) unseen(tenant string, seen map[types.NamespacedName]bool, skip types.NamespacedName) []tenancy.Holding {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []tenancy.Holding
	for key, e := range l.admitted {
		if slices.Contains(e.tenants, tenant) && key != skip && !seen[key] {
			out = append(out, e.holdings...)
		}
	}
	return out
}

// pendingShares are the shares that admissions other than skip's hold while
// the cache still shows their claims pending. The shares of an entry the
// cache has caught up with (its claim admitted, released, gone or created
// again) are dropped: the cache shows them from then on (shareHolders).
func (l *ledger) pendingShares(ctx context.Context, c client.Reader, skip types.NamespacedName) ([]tenancy.ShareHolder, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []tenancy.ShareHolder
	for key, e := range l.admitted {
		if e.shares == nil {
			continue
		}
		cl := &resourceapi.ResourceClaim{}
		err := c.Get(ctx, key, cl)
		if err != nil && !apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("get claim %s: %w", key, err)
		}
		if err != nil || cl.UID != e.uid || tenancy.ClaimState(cl) != tenancy.Pending {
			e.shares = nil
			l.admitted[key] = e
			continue
		}
		if key != skip {
			out = append(out, *e.shares)
		}
	}
	return out, nil
}

// latestDecision is the latest decision for tenant, if any.
func (l *ledger) latestDecision(tenant string) (tenancy.Decision, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	d, ok := l.latest[tenant]
	return d, ok
}
