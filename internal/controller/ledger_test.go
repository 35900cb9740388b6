package controller

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2/ktesting"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

// TestLedgerOneEntryPerAdmission checks the one store of admissions the cache
// does not show yet: one record serves both the budget (unseen) and the
// sharing guard (pendingShares); the shares go once the cache shows the claim
// other than pending, the cost once the caller forgets the claim, and
// forgetting drops both.
func TestLedgerOneEntryPerAdmission(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	claim := pendingShare("a1", "x", "gpu-0-shared")
	claim.UID = "uid-x"
	c := newSharingFake(t, sharingFixture(claim))
	key := client.ObjectKeyFromObject(claim)
	gpu := tenancy.DeviceID{Driver: "gpu.tessera.dev", Pool: "n1", Device: "gpu-0-shared"}
	holding := tenancy.Holding{Device: gpu, Memory: 1 << 30}
	shares := &tenancy.ShareHolder{Claim: key, Group: "a", Devices: []tenancy.DeviceID{gpu}}

	l := newLedger()
	l.record(key, claim.UID, "team-a", tenancy.Decision{Admit: true, Holdings: []tenancy.Holding{holding}}, shares)
	if got := l.unseen("team-a", nil, types.NamespacedName{}); !cmp.Equal(got, []tenancy.Holding{holding}) {
		t.Errorf("unseen %v, want the admission's holding", got)
	}
	pending, err := l.pendingShares(ctx, c, types.NamespacedName{})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]tenancy.ShareHolder{*shares}, pending); diff != "" {
		t.Errorf("pending shares (-want +got):\n%s", diff)
	}
	if pending, _ := l.pendingShares(ctx, c, key); len(pending) != 0 {
		t.Errorf("pending shares other than the claim's own: %v", pending)
	}
	if !l.has(key) {
		t.Fatal("the admission is not held")
	}

	// The cache shows the claim no longer pending (deallocated): its
	// shares are gone; its cost stays until the claim is forgotten.
	claim.Status.Allocation = nil
	if err := c.Status().Update(ctx, claim); err != nil {
		t.Fatal(err)
	}
	if pending, err := l.pendingShares(ctx, c, types.NamespacedName{}); err != nil || len(pending) != 0 {
		t.Errorf("pending shares once the cache shows the claim deallocated: %v (err %v)", pending, err)
	}
	if got := l.unseen("team-a", nil, types.NamespacedName{}); len(got) != 1 {
		t.Errorf("unseen %v before the claim is forgotten, want its holding", got)
	}
	l.forget(key)
	if l.has(key) || len(l.unseen("team-a", nil, types.NamespacedName{})) != 0 {
		t.Error("a forgotten admission is still held")
	}
}

// TestLedgerForgetDropsShares: a claim the admission reconciler forgets
// (deallocated) and that is allocated again, pending once more, holds no
// shares from its first admission: one forget drops the cost and the shares.
func TestLedgerForgetDropsShares(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	claim := pendingShare("a1", "x", "gpu-0-shared")
	claim.UID = "uid-x"
	c := newSharingFake(t, sharingFixture(claim))
	key := client.ObjectKeyFromObject(claim)
	gpu := tenancy.DeviceID{Driver: "gpu.tessera.dev", Pool: "n1", Device: "gpu-1-shared"}

	l := newLedger()
	l.record(key, claim.UID, "team-a", tenancy.Decision{Admit: true}, &tenancy.ShareHolder{Claim: key, Group: "a", Devices: []tenancy.DeviceID{gpu}})
	l.forget(key)
	if pending, err := l.pendingShares(ctx, c, types.NamespacedName{}); err != nil || len(pending) != 0 {
		t.Errorf("pending shares of a forgotten admission: %v (err %v)", pending, err)
	}
}

// TestLedgerSharesOfAClaimCreatedAgain: a claim deleted and created again
// under its name (another UID) holds none of its predecessor's shares.
func TestLedgerSharesOfAClaimCreatedAgain(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	claim := pendingShare("a1", "x", "gpu-0-shared")
	claim.UID = "uid-new"
	c := newSharingFake(t, sharingFixture(claim))
	key := client.ObjectKeyFromObject(claim)

	l := newLedger()
	l.record(key, "uid-old", "team-a", tenancy.Decision{Admit: true}, &tenancy.ShareHolder{Claim: key, Group: "a"})
	if pending, err := l.pendingShares(ctx, c, types.NamespacedName{}); err != nil || len(pending) != 0 {
		t.Errorf("pending shares of a predecessor: %v (err %v)", pending, err)
	}
}
