package controller

import (
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

func request(ns, name string) reconcile.Request {
	return reconcile.Request{NamespacedName: types.NamespacedName{Namespace: ns, Name: name}}
}

// TestFloodDoesNotDelayOtherTenants queues 5,000 claims of tenant a (over
// two of its namespaces), then the first claim of tenant b and one of a
// namespace of no tenant: with the fair queue, b's claim is the third
// decision (after one of a's and the other namespace's); with the FIFO of
// before, it waits for all of them.
func TestFloodDoesNotDelayOtherTenants(t *testing.T) {
	const flood = 5000
	for order, want := range map[QueueOrder]int{QueueFair: 3, QueueFIFO: flood + 2} {
		t.Run(string(order), func(t *testing.T) {
			c := newSharingFake(t, sharingFixture())
			q := newAdmissionQueue(order, c, "claim-admission", workqueue.DefaultTypedControllerRateLimiter[reconcile.Request]())
			defer q.ShutDown()
			for i := range flood {
				q.Add(request([]string{"a1", "a2"}[i%2], fmt.Sprintf("c%d", i)))
			}
			q.Add(request("free", "f"))
			b := request("b1", "first")
			q.Add(b)
			if n := q.Len(); n != flood+2 {
				t.Fatalf("queue holds %d, want %d", n, flood+2)
			}
			for i := 1; ; i++ {
				req, shutdown := q.Get()
				if shutdown {
					t.Fatal("queue shut down before b's claim came")
				}
				q.Done(req)
				if req == b {
					if i != want {
						t.Errorf("b's first claim was decision %d, want %d", i, want)
					}
					return
				}
			}
		})
	}
}

// TestFairQueueLanes: each lane's claims in their order, lanes in turn.
func TestFairQueueLanes(t *testing.T) {
	lane := map[string]string{"a1": "a", "a2": "a", "b1": "b", "c1": "c"}
	q := newFairQueue(func(r reconcile.Request) string { return lane[r.Namespace] }, workqueue.DefaultTypedControllerRateLimiter[reconcile.Request]())
	for _, r := range []reconcile.Request{request("a1", "1"), request("a2", "2"), request("a1", "3"), request("b1", "1"), request("b1", "2"), request("c1", "1")} {
		q.Add(r)
	}
	var got []string
	for q.Len() > 0 {
		r, _ := q.Get()
		q.Done(r)
		got = append(got, r.String())
	}
	want := []string{"a1/1", "b1/1", "c1/1", "a2/2", "b1/2", "a1/3"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("order (-want +got):\n%s", diff)
	}
}

// TestFairQueueContract: client-go's workqueue contract, which
// controller-runtime's workers rely on.
func TestFairQueueContract(t *testing.T) {
	q := newFairQueue(func(r reconcile.Request) string { return r.Namespace }, workqueue.DefaultTypedControllerRateLimiter[reconcile.Request]())
	x, y := request("a", "x"), request("b", "y")
	q.Add(x)
	q.Add(x)
	if n := q.Len(); n != 1 {
		t.Errorf("a request added twice is queued %d times, want once", n)
	}
	got, _ := q.Get()
	if got != x {
		t.Fatalf("Get = %v, want %v", got, x)
	}
	q.Add(x)
	if n := q.Len(); n != 0 {
		t.Errorf("a request added while processed is queued before Done (%d queued)", n)
	}
	q.Done(x)
	if n := q.Len(); n != 1 {
		t.Errorf("a request added while processed is not queued after Done (%d queued)", n)
	}
	q.Add(y)
	q.ShutDown()
	q.Add(request("c", "z"))
	var drained []reconcile.Request
	for {
		r, shutdown := q.Get()
		if shutdown {
			break
		}
		drained = append(drained, r)
		q.Done(r)
	}
	if diff := cmp.Diff([]reconcile.Request{x, y}, drained); diff != "" {
		t.Errorf("after ShutDown, Get hands out (-want +got):\n%s", diff)
	}
	q.ShutDownWithDrain()
}

// TestDecidedClaimsQueueNothing: the claim changes that follow a decision
// (the controller's own rejection, the scheduler's deallocation) queue
// nothing, so an over-budget claim is not decided again until it is
// allocated again; an admission the ledger holds is followed until the
// cache shows it.
func TestDecidedClaimsQueueNothing(t *testing.T) {
	l := newLedger()
	admittedKey := types.NamespacedName{Namespace: "a1", Name: "admitted"}
	l.record(admittedKey, "u", "a", tenancy.Decision{Admit: true}, nil)
	pending := pendingShare("a1", "pending", "gpu-0-shared")
	rejected := pendingShare("a1", "rejected", "gpu-0-shared")
	r := rejected.Status.Allocation.Devices.Results[0]
	rejected.Status.Devices = []resourceapi.AllocatedDeviceStatus{{Driver: r.Driver, Pool: r.Pool, Device: r.Device, ShareID: new(string(*r.ShareID)),
		Conditions: []metav1.Condition{{Type: tenancyv1.ConditionRejected, Status: metav1.ConditionTrue, Reason: tenancyv1.ReasonOverBudget}}}}
	deallocated := pendingShare("a1", "deallocated", "gpu-0-shared")
	deallocated.Status.Allocation = nil
	admitted := admittedShare("a1", "admitted", "gpu-0-shared")
	p := needsDecision(l)
	got := map[string]bool{}
	for _, c := range []client.Object{pending, rejected, deallocated, admitted} {
		got["update "+c.GetName()] = p.Update(event.UpdateEvent{ObjectOld: c, ObjectNew: c})
		got["delete "+c.GetName()] = p.Delete(event.DeleteEvent{Object: c})
	}
	want := map[string]bool{
		"update pending": true, "delete pending": false,
		"update rejected": false, "delete rejected": false,
		"update deallocated": false, "delete deallocated": false,
		"update admitted": true, "delete admitted": true,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("queued (-want +got):\n%s", diff)
	}
}

// TestFairQueueRetriesWithBackoff: a failed decision comes back after the
// rate limiter's delay, not at once.
func TestFairQueueRetriesWithBackoff(t *testing.T) {
	const delay = 50 * time.Millisecond
	q := newFairQueue(func(r reconcile.Request) string { return r.Namespace }, workqueue.NewTypedItemExponentialFailureRateLimiter[reconcile.Request](delay, time.Second))
	defer q.ShutDown()
	x := request("a", "x")
	start := time.Now()
	q.AddRateLimited(x)
	if n := q.Len(); n != 0 {
		t.Errorf("a rate-limited request is queued at once (%d queued)", n)
	}
	if got, _ := q.Get(); got != x {
		t.Fatalf("Get = %v, want %v", got, x)
	}
	if waited := time.Since(start); waited < delay {
		t.Errorf("a rate-limited request came back after %s, want at least %s", waited, delay)
	}
	if n := q.NumRequeues(x); n != 1 {
		t.Errorf("NumRequeues = %d, want 1", n)
	}
	q.Forget(x)
	if n := q.NumRequeues(x); n != 0 {
		t.Errorf("NumRequeues after Forget = %d, want 0", n)
	}
}
