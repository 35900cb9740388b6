package controller

import (
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/client-go/util/workqueue"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
)

// fairQueue is the admission reconciler's work queue: a lane per tenant
// (fairKey), served round robin, one claim per lane in turn, each lane in
// the order its claims arrived. Decisions stay serial (budgets are exact
// only so); what changes is whose claim comes next. With a FIFO, a tenant
// with thousands of claims awaiting decision (over-budget pods the
// scheduler keeps retrying) puts every other tenant's
// claim behind all of them; here, another tenant's claim waits for at most
// one decision per busy lane.
//
// It keeps client-go's workqueue contract, which controller-runtime's
// workers rely on: a request is queued at most once (dirty), and a request
// added while it is being processed is queued again only when Done.
type fairQueue struct {
	fairKey     func(reconcile.Request) string
	rateLimiter workqueue.TypedRateLimiter[reconcile.Request]

	mu   sync.Mutex
	cond *sync.Cond
	// lanes holds each lane's queued requests, oldest first; turns the
	// lanes with queued requests, the next to serve first.
	lanes map[string][]reconcile.Request
	turns []string
	// laneOf is the lane of each dirty request.
	laneOf       map[reconcile.Request]string
	dirty        sets.Set[reconcile.Request]
	processing   sets.Set[reconcile.Request]
	queued       int
	shuttingDown bool
}

var _ workqueue.TypedRateLimitingInterface[reconcile.Request] = &fairQueue{}

func newFairQueue(fairKey func(reconcile.Request) string, rateLimiter workqueue.TypedRateLimiter[reconcile.Request]) *fairQueue {
	q := &fairQueue{
		fairKey:     fairKey,
		rateLimiter: rateLimiter,
		lanes:       map[string][]reconcile.Request{},
		laneOf:      map[reconcile.Request]string{},
		dirty:       sets.New[reconcile.Request](),
		processing:  sets.New[reconcile.Request](),
	}
	q.cond = sync.NewCond(&q.mu)
	return q
}

// Add queues req in its lane unless it is queued already.
func (q *fairQueue) Add(req reconcile.Request) {
	// The lane is found outside the lock: it reads the cache.
	lane := q.fairKey(req)
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.shuttingDown || q.dirty.Has(req) {
		return
	}
	q.dirty.Insert(req)
	if q.processing.Has(req) {
		// Queued when Done.
		q.laneOf[req] = lane
		return
	}
	q.push(req, lane)
}

func (q *fairQueue) push(req reconcile.Request, lane string) {
	if len(q.lanes[lane]) == 0 {
		q.turns = append(q.turns, lane)
	}
	q.lanes[lane] = append(q.lanes[lane], req)
	q.laneOf[req] = lane
	q.queued++
	q.cond.Signal()
}

// Get waits for a request and hands out the oldest of the lane whose turn
// it is; that lane's turn comes again after every other busy lane's.
func (q *fairQueue) Get() (reconcile.Request, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for q.queued == 0 && !q.shuttingDown {
		q.cond.Wait()
	}
	if q.queued == 0 {
		return reconcile.Request{}, true
	}
	lane := q.turns[0]
	q.turns = q.turns[1:]
	req := q.lanes[lane][0]
	if rest := q.lanes[lane][1:]; len(rest) > 0 {
		q.lanes[lane] = rest
		q.turns = append(q.turns, lane)
	} else {
		delete(q.lanes, lane)
	}
	delete(q.laneOf, req)
	q.queued--
	q.dirty.Delete(req)
	q.processing.Insert(req)
	return req, false
}

// Done marks req processed; if it was added meanwhile, it is queued again.
func (q *fairQueue) Done(req reconcile.Request) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.processing.Delete(req)
	if q.dirty.Has(req) && !q.shuttingDown {
		q.push(req, q.laneOf[req])
	}
	q.cond.Broadcast()
}

// Len is the number of queued requests.
func (q *fairQueue) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.queued
}

// ShutDown stops new requests; Get hands out the queued ones, then reports
// the shutdown.
func (q *fairQueue) ShutDown() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.shuttingDown = true
	q.cond.Broadcast()
}

// ShutDownWithDrain shuts down and waits until the requests being processed
// are done.
func (q *fairQueue) ShutDownWithDrain() {
	q.ShutDown()
	q.mu.Lock()
	defer q.mu.Unlock()
	for q.processing.Len() > 0 {
		q.cond.Wait()
	}
}

// ShuttingDown reports whether ShutDown was called.
func (q *fairQueue) ShuttingDown() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.shuttingDown
}

// AddAfter adds req once d has passed.
func (q *fairQueue) AddAfter(req reconcile.Request, d time.Duration) {
	if d <= 0 {
		q.Add(req)
		return
	}
	time.AfterFunc(d, func() { q.Add(req) })
}

// AddRateLimited adds req after the rate limiter's delay for it: a decision
// that failed (the API server refused a write) is retried with backoff.
func (q *fairQueue) AddRateLimited(req reconcile.Request) {
	q.AddAfter(req, q.rateLimiter.When(req))
}

// Forget resets req's backoff.
func (q *fairQueue) Forget(req reconcile.Request) { q.rateLimiter.Forget(req) }

// NumRequeues is how often req was added rate limited since Forget.
func (q *fairQueue) NumRequeues(req reconcile.Request) int { return q.rateLimiter.NumRequeues(req) }
