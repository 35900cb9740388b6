package controller

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2/ktesting"
	testingclock "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

// claimPod is a pending pod of namespace ns whose claim "gpu" is claim,
// bound to node when node is set.
func claimPod(ns, name, claim, node string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.PodSpec{
			NodeName:       node,
			ResourceClaims: []corev1.PodResourceClaim{{Name: "gpu", ResourceClaimTemplateName: ptr.To("share")}},
		},
		Status: corev1.PodStatus{
			Phase:                 corev1.PodPending,
			ResourceClaimStatuses: []corev1.PodResourceClaimStatus{{Name: "gpu", ResourceClaimName: ptr.To(claim)}},
		},
	}
}

// TestRequeueAfterBindingWait: when a pod whose share waited for its binding
// condition is bound while another pod with claims is unbound, the sharing
// taint of the share's GPU is stamped again (a ResourceSlice change to the
// scheduler), and only its timeAdded changes, which the sharing reconciler
// leaves alone. Without a waiting pod, or for a pod that was not just bound
// or held no gated share, nothing is written.
func TestRequeueAfterBindingWait(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	held := admittedShare("a1", "x", "gpu-0-shared")
	ungated := admittedShare("a1", "y", "gpu-0-shared")
	ungated.Status.Allocation.Devices.Results[0].BindingConditions = nil
	ungated.Status.Allocation.Devices.Results[0].BindingFailureConditions = nil
	waiting := claimPod("b1", "waiting", "w", "")
	c := newSharingFake(t, sharingFixture(held, ungated, waiting))
	// The sharing reconciler taints gpu-0-shared for tenant a.
	if _, err := (&SharingReconciler{client: c}).Reconcile(ctx, reconcile.Request{}); err != nil {
		t.Fatal(err)
	}
	ruleKey := types.NamespacedName{Name: tenancy.TaintRuleName(tenancy.SharedDevices(held)[0])}
	rule := func() *resourceapi.DeviceTaintRule {
		t.Helper()
		r := &resourceapi.DeviceTaintRule{}
		if err := c.Get(ctx, ruleKey, r); err != nil {
			t.Fatal(err)
		}
		return r
	}
	before := rule()
	clock := time.Date(2026, 12, 1, 5, 0, 0, 0, time.UTC)
	r := &RequeueReconciler{client: c, now: func() time.Time { return clock }}

	if got := r.boundShares(ctx, claimPod("a1", "p", "x", "n1"), claimPod("a1", "p", "x", "n1")); len(got) != 0 {
		t.Errorf("an update of a pod bound before maps to %v, want nothing", got)
	}
	if got := r.boundShares(ctx, claimPod("a1", "q", "y", ""), claimPod("a1", "q", "y", "n1")); len(got) != 0 {
		t.Errorf("binding a pod whose share had no binding condition maps to %v, want nothing", got)
	}
	if got := r.boundShares(ctx, claimPod("a1", "r", "gone", ""), claimPod("a1", "r", "gone", "n1")); len(got) != 0 {
		t.Errorf("binding a pod whose claim is gone maps to %v, want nothing", got)
	}
	reqs := r.boundShares(ctx, claimPod("a1", "p", "x", ""), claimPod("a1", "p", "x", "n1"))
	if diff := cmp.Diff([]reconcile.Request{{NamespacedName: ruleKey}}, reqs); diff != "" {
		t.Fatalf("binding the pod of the gated share maps to (-want +got):\n%s", diff)
	}

	reconcileOnce := func() {
		t.Helper()
		if _, err := r.Reconcile(ctx, reqs[0]); err != nil {
			t.Fatal(err)
		}
	}
	nudges := testutil.ToFloat64(schedulerNudges)
	reconcileOnce()
	if got := testutil.ToFloat64(schedulerNudges) - nudges; got != 1 {
		t.Errorf("tessera_sharing_scheduler_nudges_total went up by %v, want 1", got)
	}
	first := rule()
	if first.Spec.Taint.TimeAdded == nil || first.Spec.Taint.TimeAdded.Equal(before.Spec.Taint.TimeAdded) {
		t.Fatalf("taint timeAdded %v not stamped again (was %v)", first.Spec.Taint.TimeAdded, before.Spec.Taint.TimeAdded)
	}
	if first.Spec.Taint.Key != before.Spec.Taint.Key || first.Spec.Taint.Value != before.Spec.Taint.Value || first.Spec.Taint.Effect != before.Spec.Taint.Effect {
		t.Errorf("taint changed from %+v to %+v, want only its timeAdded", before.Spec.Taint, first.Spec.Taint)
	}
	// A second bind within the same second still changes the stamp.
	reconcileOnce()
	if second := rule(); !second.Spec.Taint.TimeAdded.After(first.Spec.Taint.TimeAdded.Time) {
		t.Errorf("second stamp %v not after the first %v", second.Spec.Taint.TimeAdded, first.Spec.Taint.TimeAdded)
	}
	// The sharing reconciler keeps the stamp.
	stamped := rule()
	if _, err := (&SharingReconciler{client: c}).Reconcile(ctx, reconcile.Request{}); err != nil {
		t.Fatal(err)
	}
	if after := rule(); after.ResourceVersion != stamped.ResourceVersion {
		t.Errorf("the sharing reconciler rewrote the stamped rule: %+v", after.Spec.Taint)
	}

	// Nobody waits: nothing is written.
	if err := c.Delete(ctx, waiting); err != nil {
		t.Fatal(err)
	}
	reconcileOnce()
	if after := rule(); after.ResourceVersion != stamped.ResourceVersion {
		t.Errorf("stamped with no pod waiting: %+v", after.Spec.Taint)
	}

	// A pod waits but the GPU's slice is gone with its rule: no error.
	if err := c.Create(ctx, claimPod("b1", "waiting2", "w2", "")); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx, stamped); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Reconcile(ctx, reqs[0]); err != nil {
		t.Errorf("reconcile of a GPU without a rule: %v", err)
	}
	if err := c.Get(ctx, ruleKey, &resourceapi.DeviceTaintRule{}); !apierrors.IsNotFound(err) {
		t.Errorf("the requeue reconciler made a rule: %v", err)
	}
}

// delayQueue records what a handler adds, and when it is due.
type delayQueue struct {
	workqueue.TypedRateLimitingInterface[reconcile.Request]
	added map[reconcile.Request]time.Duration
}

func (q *delayQueue) AddAfter(req reconcile.Request, d time.Duration) { q.added[req] = d }
func (q *delayQueue) Add(req reconcile.Request)                       { q.added[req] = 0 }

// TestRequeueAfterDeletedWhileWaited: a claim whose share waited for its
// binding condition, deallocated and then deleted (its pod deleted while the
// scheduler still held it in flight), has its GPU's sharing taint stamped
// again releaseDelay after the deletion, once. A claim with no gated share,
// or one allocated again before it is deleted, maps to nothing; a claim
// deleted while still allocated names its GPU itself.
func TestRequeueAfterDeletedWhileWaited(t *testing.T) {
	gpu0 := reconcile.Request{NamespacedName: types.NamespacedName{Name: tenancy.TaintRuleName(tenancy.DeviceID{Driver: gpuapi.DriverName, Pool: "n1", Device: "gpu-0-shared"})}}
	deallocated := func(c *resourceapi.ResourceClaim) *resourceapi.ResourceClaim {
		c = c.DeepCopy()
		c.Status.Allocation, c.Status.Devices, c.Status.ReservedFor = nil, nil, nil
		return c
	}
	withUID := func(c *resourceapi.ResourceClaim, uid string) *resourceapi.ResourceClaim {
		c.UID = types.UID(uid)
		return c
	}
	ungated := func(c *resourceapi.ResourceClaim) *resourceapi.ResourceClaim {
		c.Status.Allocation.Devices.Results[0].BindingConditions = nil
		c.Status.Allocation.Devices.Results[0].BindingFailureConditions = nil
		return c
	}
	r := &RequeueReconciler{}
	events := r.claimEvents()
	q := &delayQueue{added: map[reconcile.Request]time.Duration{}}
	update := func(old, claim *resourceapi.ResourceClaim) {
		events.Update(t.Context(), event.TypedUpdateEvent[client.Object]{ObjectOld: old, ObjectNew: claim}, q)
	}
	remove := func(claim *resourceapi.ResourceClaim) map[reconcile.Request]time.Duration {
		t.Helper()
		clear(q.added)
		events.Delete(t.Context(), event.TypedDeleteEvent[client.Object]{Object: claim}, q)
		return q.added
	}

	waited := withUID(admittedShare("a1", "x", "gpu-0-shared"), "x")
	update(waited, deallocated(waited))
	if len(q.added) != 0 {
		t.Errorf("the deallocation itself queued %v, want nothing until the claim is deleted", q.added)
	}
	want := map[reconcile.Request]time.Duration{gpu0: releaseDelay}
	if diff := cmp.Diff(want, remove(deallocated(waited))); diff != "" {
		t.Errorf("deleting the deallocated claim queues (-want +got):\n%s", diff)
	}
	if got := remove(deallocated(waited)); len(got) != 0 {
		t.Errorf("a second delete event queued %v, want nothing", got)
	}
	if len(r.released) != 0 {
		t.Errorf("claims still followed after their deletion: %v", r.released)
	}

	plain := withUID(ungated(admittedShare("a1", "y", "gpu-0-shared")), "y")
	update(plain, deallocated(plain))
	if got := remove(deallocated(plain)); len(got) != 0 {
		t.Errorf("deleting a claim whose share had no binding condition queued %v", got)
	}

	again := withUID(admittedShare("a1", "z", "gpu-0-shared"), "z")
	update(again, deallocated(again))
	update(deallocated(again), ungated(withUID(admittedShare("a1", "z", "gpu-1-shared"), "z")))
	if got := remove(deallocated(again)); len(got) != 0 {
		t.Errorf("deleting a claim allocated again without a gated share queued %v", got)
	}

	if diff := cmp.Diff(want, remove(withUID(admittedShare("a1", "w", "gpu-0-shared"), "w"))); diff != "" {
		t.Errorf("deleting a claim still allocated queues (-want +got):\n%s", diff)
	}
}

// TestNudgeAtStart: a controller that starts sends, releaseDelay later, the
// first sharing taint rule by name to its queue, for Reconcile to stamp if a
// pod waits; with no rule, nothing.
func TestNudgeAtStart(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	c := newSharingFake(t, sharingFixture(admittedShare("a1", "x", "gpu-1-shared"), claimPod("b1", "waiting", "w", "")))
	var waited []time.Duration
	r := &RequeueReconciler{client: c, after: func(d time.Duration) <-chan time.Time {
		waited = append(waited, d)
		ch := make(chan time.Time, 1)
		ch <- time.Time{}
		return ch
	}}
	out := make(chan event.GenericEvent, 2)
	r.nudgeAtStart(ctx, out)
	if len(out) != 0 {
		t.Fatalf("nudged with no sharing taint rule: %v", <-out)
	}
	if _, err := (&SharingReconciler{client: c}).Reconcile(ctx, reconcile.Request{}); err != nil {
		t.Fatal(err)
	}
	r.nudgeAtStart(ctx, out)
	if len(out) != 1 {
		t.Fatalf("%d nudges, want 1", len(out))
	}
	first := tenancy.TaintRuleName(tenancy.DeviceID{Driver: gpuapi.DriverName, Pool: "n1", Device: "gpu-0-shared"})
	if got := (<-out).Object.GetName(); got != first {
		t.Errorf("nudged rule %s, want %s", got, first)
	}
	if diff := cmp.Diff([]time.Duration{releaseDelay, releaseDelay}, waited); diff != "" {
		t.Errorf("waits before nudging (-want +got):\n%s", diff)
	}
}

// TestDeletedSharesStampOncePerGPU: a tenant that churns share pods on a GPU
// makes at most one stamp of its rule per releaseDelay through deletions: the
// controller's delaying queue holds one entry per rule however many claims
// of that GPU are deleted meanwhile, and none is due before releaseDelay.
func TestDeletedSharesStampOncePerGPU(t *testing.T) {
	clock := testingclock.NewFakeClock(time.Date(2026, 12, 1, 5, 0, 0, 0, time.UTC))
	q := workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[reconcile.Request](),
		workqueue.TypedRateLimitingQueueConfig[reconcile.Request]{Clock: clock})
	defer q.ShutDown()
	r := &RequeueReconciler{}
	events := r.claimEvents()
	for i := range 20 {
		c := admittedShare("a1", fmt.Sprintf("c%d", i), "gpu-0-shared")
		c.UID = types.UID(c.Name)
		events.Delete(t.Context(), event.TypedDeleteEvent[client.Object]{Object: c}, q)
	}
	clock.Step(releaseDelay - time.Second)
	time.Sleep(50 * time.Millisecond)
	if n := q.Len(); n != 0 {
		t.Fatalf("%d stamps due before releaseDelay", n)
	}
	clock.Step(time.Second)
	if err := wait.PollUntilContextTimeout(t.Context(), 10*time.Millisecond, 5*time.Second, true, func(context.Context) (bool, error) {
		return q.Len() > 0, nil
	}); err != nil {
		t.Fatal("no stamp due after releaseDelay")
	}
	time.Sleep(50 * time.Millisecond)
	if n := q.Len(); n != 1 {
		t.Errorf("%d stamps queued for 20 deleted claims of one GPU, want 1", n)
	}
}
