package controller

import (
	"context"
	"fmt"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

// QueueOrder is the order in which claims awaiting a decision are decided.
type QueueOrder string

const (
	// QueueFair serves each tenant's claims in turn (fairQueue).
	QueueFair QueueOrder = "fair"
	// QueueFIFO decides claims in the order they arrived, whatever their
	// tenant: client-go's workqueue, as before the fair queue. Kept to measure
	// what fairness buys (make bench-admission).
	QueueFIFO QueueOrder = "fifo"
)

// Set parses a flag value.
func (o *QueueOrder) Set(s string) error {
	switch QueueOrder(s) {
	case QueueFair, QueueFIFO:
		*o = QueueOrder(s)
		return nil
	}
	return fmt.Errorf("admission queue must be %q or %q, not %q", QueueFair, QueueFIFO, s)
}

// String is the flag value.
func (o *QueueOrder) String() string { return string(*o) }

// Type names the flag's type.
func (o *QueueOrder) Type() string { return "fair|fifo" }

// admissionQueueLen is the Len of the admission reconciler's queue, once
// the controller has built it.
var admissionQueueLen atomic.Pointer[func() int]

var admissionQueueDepth = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
	Namespace: "tessera", Subsystem: "admission", Name: "queue_depth",
	Help: "Claim changes waiting for the admission reconciler (allocations awaiting a decision, and releases).",
}, func() float64 {
	if l := admissionQueueLen.Load(); l != nil {
		return float64((*l)())
	}
	return 0
})

func init() {
	ctrlmetrics.Registry.MustRegister(admissionQueueDepth)
}

// newAdmissionQueue builds the reconciler's queue in the given order.
func newAdmissionQueue(order QueueOrder, c client.Reader, name string, rl workqueue.TypedRateLimiter[reconcile.Request]) workqueue.TypedRateLimitingInterface[reconcile.Request] {
	var q workqueue.TypedRateLimitingInterface[reconcile.Request]
	if order == QueueFIFO {
		q = workqueue.NewTypedRateLimitingQueueWithConfig(rl, workqueue.TypedRateLimitingQueueConfig[reconcile.Request]{Name: name})
	} else {
		q = newFairQueue(tenantLane(c), rl)
	}
	l := q.Len
	admissionQueueLen.Store(&l)
	return q
}

// tenantLane is a claim's lane in the fair queue: its namespace's tenant,
// or, for a namespace of no tenant (or of several, in conflict), the
// namespace itself. It reads the namespace and the tenants from the cache.
func tenantLane(c client.Reader) func(reconcile.Request) string {
	return func(req reconcile.Request) string {
		ctx := context.Background()
		ns := &corev1.Namespace{}
		if err := c.Get(ctx, types.NamespacedName{Name: req.Namespace}, ns); err == nil {
			if tenants, err := listTenants(ctx, c); err == nil {
				owners, _ := tenancy.Owners(tenants, []*corev1.Namespace{ns})
				if o := owners[ns.Name]; len(o) == 1 {
					return "tenant/" + o[0]
				}
			}
		}
		return "namespace/" + req.Namespace
	}
}

// needsDecision passes the claim changes the reconciler acts on: a claim
// awaiting its decision, and a claim the ledger still counts (its admission
// showing in the cache, its release, its deletion release the entry). The
// controller's own writes of a rejection, and the scheduler's deallocation
// that follows, queue nothing: an over-budget claim is decided again only
// when the scheduler allocates it again, at its own backoff, never in a
// loop of the controller's.
func needsDecision(l *ledger) predicate.TypedPredicate[client.Object] {
	relevant := func(o client.Object) bool {
		c, ok := o.(*resourceapi.ResourceClaim)
		return !ok || tenancy.ClaimState(c) == tenancy.Pending || l.has(client.ObjectKeyFromObject(o))
	}
	return predicate.Funcs{
		CreateFunc:  func(e event.CreateEvent) bool { return relevant(e.Object) },
		UpdateFunc:  func(e event.UpdateEvent) bool { return relevant(e.ObjectNew) },
		DeleteFunc:  func(e event.DeleteEvent) bool { return l.has(client.ObjectKeyFromObject(e.Object)) },
		GenericFunc: func(event.GenericEvent) bool { return true },
	}
}
