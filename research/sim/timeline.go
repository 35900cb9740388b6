package sim

import (
	"container/heap"
	"context"
	"fmt"
	"math"
	"slices"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/dynamic-resource-allocation/structured"

	"github.com/tessera-gpu/tessera/pkg/placement"
)

// Budgets says how far a tenant may go beyond its guarantee.
type Budgets string

const (
	// BudgetsHard means: each tenant's budget is its guarantee; it never holds
	// more, however idle the rest of the fleet is.
	BudgetsHard Budgets = "hard"
	// BudgetsElastic means: each tenant may borrow beyond its guarantee up to its
	// budget while GPUs are free, and a tenant below its guarantee with a
	// pod that does not fit reclaims borrowed pods (tenancy.ChooseVictims).
	BudgetsElastic Budgets = "elastic"
)

// TimelineOptions of a time-driven replay.
type TimelineOptions struct {
	Policy Policy
	Weight int64
	// Budgets is hard or elastic.
	Budgets Budgets
	// Tenants share the trace's pods (each pod to one tenant, at random by
	// seed) and the fleet's GPU memory (equal guarantees, adding up to the
	// fleet's).
	Tenants int
	// Split, when set, weighs the tenants' shares of the pods (one weight
	// per tenant); the guarantees stay equal.
	Split []float64
	// ElasticBudget is an elastic tenant's budget as a share of the fleet's
	// GPU memory (1 = all of it).
	ElasticBudget float64
	// Speedup divides the trace's arrival times; runtimes are kept. The
	// openb pods alive at once ask for under 1 % of its fleet, so only a
	// compressed timeline makes GPUs scarce.
	Speedup float64
	// ReclaimDelay is the time between evicting a pod and its devices being
	// free (the pod's termination grace period), in seconds.
	ReclaimDelay float64
	// ReclaimInterval is the least time between two reclaims for one pod
	// that still does not fit, in seconds (the controller's requeue).
	ReclaimInterval float64
	// MaxEvents bounds one run's events; a run that needs more fails.
	MaxEvents int
	// SeriesStep is the time between two points of the recorded series, in
	// (compressed) seconds; 0 for none.
	SeriesStep float64
}

// seedTimeline is one run's measures.
type seedTimeline struct {
	// contended is the time during which the GPU demand of the pods that
	// exist (running, terminating or pending) is at least the capacity;
	// unallocated integrates capacity minus allocation over that time.
	contended, unallocated float64
	// waits are the owner waits (see TimelineResult.Waits).
	waits      []float64
	owedOpen   int
	evictions  int
	placements int
	unplaced   int
	lostWork   float64
	// peakBorrowed is the most any tenant held above its guarantee, bytes.
	peakBorrowed int64
	end          float64
	series       []SeriesPoint
	events       int
}

// SeriesPoint is the state of a run at one time.
type SeriesPoint struct {
	Seconds          float64 `json:"seconds"`
	DemandPercent    float64 `json:"demandPercent"`
	AllocatedPercent float64 `json:"allocatedPercent"`
}

type podState int

const (
	statePending podState = iota
	stateRunning
	stateTerminating
	stateDone
)

type blockReason int

const (
	blockNone     blockReason = iota // not tried since it became pending
	blockCapacity                    // no node had room
	blockBudget                      // its tenant's budget
)

type simPod struct {
	tenant   int
	state    podState
	since    float64 // pending: when it became pending; running: when it started
	node     int
	gpus     []int
	uid      int
	cost     int64
	gen      int
	blocked  blockReason
	owedFrom float64 // when it was first owed and did not fit; -1 if not
	// reclaimAt is when the pod may next reclaim.
	reclaimAt float64
}

type eventKind int

const (
	eventFree   eventKind = iota // an evicted pod's devices are free
	eventFinish                  // a running pod ends
	eventArrive
)

type event struct {
	t    float64
	kind eventKind
	pod  int
	gen  int
	seq  int
}

type events []event

func (e events) Len() int { return len(e) }
func (e events) Less(i, j int) bool {
	a, b := e[i], e[j]
	if a.t != b.t {
		return a.t < b.t
	}
	if a.kind != b.kind {
		return a.kind < b.kind
	}
	return a.seq < b.seq
}
func (e events) Swap(i, j int) { e[i], e[j] = e[j], e[i] }
func (e *events) Push(x any)   { *e = append(*e, x.(event)) }
func (e *events) Pop() any {
	old := *e
	x := old[len(old)-1]
	*e = old[:len(old)-1]
	return x
}

// timeline is one run's state.
type timeline struct {
	ctx     context.Context
	fleet   *Fleet
	sched   *Scheduler
	pods    []TimedPod
	sim     []simPod
	opts    TimelineOptions
	tenants *tenants
	queue   events
	seq     int
	// pending in the order they became pending.
	pending []int
	onNode  [][]int
	// dirty are the nodes freed since the last pass; budgetDirty the
	// tenants whose usage fell.
	dirty       map[int]bool
	budgetDirty map[int]bool
	allocated   int64 // milli-GPUs of running and terminating pods
	waiting     int64 // milli-GPUs of pending pods
	uid         int
	res         seedTimeline
	nextPoint   float64
	// seriesEnd is the last arrival: after it the series is not recorded.
	seriesEnd float64
	// leastCost is each pod's tenancy.Cost on the cheapest GPU it may use.
	leastCost []int64
	owed      []bool
	order     []int
}

func newTimeline(ctx context.Context, fleet *Fleet, workload placement.Workload, pods []TimedPod, tenantOf []int, opts TimelineOptions, seed int) *timeline {
	sched := newScheduler(fleet, workload, Options{Policy: opts.Policy, Weight: opts.Weight}, seed)
	for i := range sched.states {
		sched.states[i].held = map[int][]resourceapi.DeviceRequestAllocationResult{}
	}
	tl := &timeline{
		ctx: ctx, fleet: fleet, sched: sched, pods: pods, opts: opts,
		sim: make([]simPod, len(pods)), onNode: make([][]int, len(fleet.Specs)),
		dirty: map[int]bool{}, budgetDirty: map[int]bool{},
		tenants: newTenants(fleet, opts),
	}
	speedup := max(opts.Speedup, 1e-9)
	tl.leastCost = make([]int64, len(pods))
	for i, p := range pods {
		tl.sim[i] = simPod{tenant: tenantOf[i], node: -1, owedFrom: -1}
		tl.push(event{t: p.Arrival / speedup, kind: eventArrive, pod: i})
		tl.seriesEnd = max(tl.seriesEnd, p.Arrival/speedup)
		tl.leastCost[i] = tl.tenants.leastCost(p.Pod)
	}
	return tl
}

func (tl *timeline) push(e event) {
	tl.seq++
	e.seq = tl.seq
	heap.Push(&tl.queue, e)
}

// run plays every event: arrivals in trace order, ends of pods after their
// runtime from when the simulation placed them, and the freeing of evicted
// pods' devices; after the events of one instant, pending pods are retried.
func (tl *timeline) run() (seedTimeline, error) {
	now := 0.0
	for tl.queue.Len() > 0 {
		if tl.res.events >= tl.opts.MaxEvents {
			return tl.res, fmt.Errorf("timeline: more than %d events (evicted pods may keep coming back; raise --max-events)", tl.opts.MaxEvents)
		}
		if tl.res.events%1024 == 0 {
			if err := tl.ctx.Err(); err != nil {
				return tl.res, fmt.Errorf("timeline: %w", err)
			}
		}
		t := tl.queue[0].t
		tl.account(now, t)
		now = t
		for tl.queue.Len() > 0 && tl.queue[0].t == t {
			e := heap.Pop(&tl.queue).(event)
			tl.res.events++
			if err := tl.handle(e, t); err != nil {
				return tl.res, err
			}
		}
		if err := tl.pass(t); err != nil {
			return tl.res, err
		}
	}
	tl.res.end = now
	for _, i := range tl.pending {
		tl.res.unplaced++
		if tl.sim[i].owedFrom >= 0 {
			tl.res.owedOpen++
		}
	}
	return tl.res, nil
}

func (tl *timeline) handle(e event, t float64) error {
	p := &tl.sim[e.pod]
	switch e.kind {
	case eventArrive:
		tl.makePending(e.pod, t)
	case eventFinish:
		if p.gen != e.gen || p.state != stateRunning {
			return nil
		}
		if err := tl.release(e.pod); err != nil {
			return err
		}
		p.state = stateDone
	case eventFree:
		if p.gen != e.gen || p.state != stateTerminating {
			return nil
		}
		if err := tl.release(e.pod); err != nil {
			return err
		}
		tl.res.evictions++
		tl.res.lostWork += (t - p.since) * float64(tl.pods[e.pod].Request.Demand()) / placement.WholeGPU
		// The pod's controller makes it again; it starts over.
		tl.makePending(e.pod, t)
	}
	return nil
}

func (tl *timeline) makePending(i int, t float64) {
	p := &tl.sim[i]
	p.state, p.since, p.blocked, p.owedFrom, p.reclaimAt = statePending, t, blockNone, -1, t
	tl.pending = append(tl.pending, i)
	tl.waiting += tl.pods[i].Request.Demand()
}

// account integrates the measures over [from, to), during which nothing
// changes.
func (tl *timeline) account(from, to float64) {
	capacity := tl.fleet.Capacity
	for tl.opts.SeriesStep > 0 && tl.nextPoint <= to && tl.nextPoint <= tl.seriesEnd {
		tl.res.series = append(tl.res.series, SeriesPoint{
			Seconds:          tl.nextPoint,
			DemandPercent:    100 * float64(tl.allocated+tl.waiting) / float64(capacity),
			AllocatedPercent: 100 * float64(tl.allocated) / float64(capacity),
		})
		tl.nextPoint += tl.opts.SeriesStep
	}
	dt := to - from
	if dt <= 0 || tl.allocated+tl.waiting < capacity {
		return
	}
	tl.res.contended += dt
	tl.res.unallocated += dt * float64(capacity-tl.allocated)
}

// pass retries pending pods: first those their tenant is owed (within its
// guarantee), then the rest, each group in the order they became pending. A
// pod that found no room is tried again only when a node it may use was
// freed, one stopped by its budget only when its tenant's usage fell. An
// owed pod that still does not fit reclaims, with elastic budgets.
func (tl *timeline) pass(t float64) error {
	owed := tl.owedPods()
	order := tl.order[:0]
	for _, i := range tl.pending {
		if owed[i] {
			order = append(order, i)
		}
	}
	for _, i := range tl.pending {
		if !owed[i] {
			order = append(order, i)
		}
	}
	tl.order = order
	for _, i := range order {
		placed, err := tl.retry(i, t)
		if err != nil {
			return err
		}
		p := &tl.sim[i]
		if placed || !owed[i] {
			continue
		}
		if p.owedFrom < 0 {
			p.owedFrom = t
		}
		if tl.opts.Budgets == BudgetsElastic && p.blocked == blockCapacity && t >= p.reclaimAt {
			tl.reclaim(i, t)
		}
	}
	// Pods become pending only between passes, in time order, so what is
	// left keeps that order.
	tl.pending = slices.DeleteFunc(tl.pending, func(i int) bool { return tl.sim[i].state != statePending })
	clear(tl.dirty)
	clear(tl.budgetDirty)
	return nil
}

// owedPods are the pending pods within their tenant's guarantee: taken in
// the order they became pending, each at its least cost, while the tenant's
// usage (less what is being evicted) plus theirs stays within it.
func (tl *timeline) owedPods() []bool {
	room := make([]int64, tl.tenants.n)
	for k := range room {
		room[k] = tl.tenants.guarantee - tl.tenants.effective(k)
	}
	if tl.owed == nil {
		tl.owed = make([]bool, len(tl.pods))
	}
	for _, i := range tl.pending {
		k := tl.sim[i].tenant
		c := tl.leastCost[i]
		tl.owed[i] = c <= room[k]
		if tl.owed[i] {
			room[k] -= c
		}
	}
	return tl.owed
}

// retry tries to place a pending pod if anything it waits for changed.
func (tl *timeline) retry(i int, t float64) (bool, error) {
	p := &tl.sim[i]
	pod := tl.pods[i].Pod
	switch p.blocked {
	case blockBudget:
		if !tl.budgetDirty[p.tenant] {
			return false, nil
		}
	case blockCapacity:
		r := tl.sched.request(pod)
		room := false
		for n := range tl.dirty {
			if modelAllows(pod, tl.fleet.Specs[n]) && tl.sched.states[n].node.Fits(r) {
				room = true
				break
			}
		}
		if !room {
			return false, nil
		}
	}
	if !tl.tenants.mayHold(p.tenant, tl.leastCost[i]) {
		p.blocked = blockBudget
		return false, nil
	}
	return tl.place(i, t)
}

// place schedules the pod as the trace mode does (the policy's node choice,
// the allocator on that node), with the tenant's budget checked at the cost
// on the chosen node, as admission would.
func (tl *timeline) place(i int, t float64) (bool, error) {
	p := &tl.sim[i]
	pod := tl.pods[i].Pod
	r := tl.sched.request(pod)
	var exclude map[int]bool
	for range len(tl.fleet.Specs) + 1 {
		node, pin := tl.sched.Pick(pod, exclude)
		if node < 0 {
			p.blocked = blockCapacity
			return false, nil
		}
		cost := tl.tenants.cost(pod, node)
		if !tl.tenants.mayHold(p.tenant, cost) {
			p.blocked = blockBudget
			return false, nil
		}
		tl.uid++
		gpus, err := tl.fleet.allocate(tl.ctx, tl.sched.states, node, tl.uid, r, pin)
		if err != nil {
			return false, err
		}
		if gpus == nil {
			if exclude == nil {
				exclude = map[int]bool{}
			}
			exclude[node] = true
			continue
		}
		if p.owedFrom >= 0 {
			tl.res.waits = append(tl.res.waits, t-p.owedFrom)
		}
		p.state, p.since, p.node, p.gpus, p.uid, p.cost, p.blocked = stateRunning, t, node, gpus, tl.uid, cost, blockNone
		p.gen++
		tl.onNode[node] = append(tl.onNode[node], i)
		tl.tenants.used[p.tenant] += cost
		tl.res.peakBorrowed = max(tl.res.peakBorrowed, tl.tenants.used[p.tenant]-tl.tenants.guarantee)
		tl.allocated += pod.Request.Demand()
		tl.waiting -= pod.Request.Demand()
		tl.res.placements++
		if rt := tl.pods[i].Runtime; rt >= 0 {
			tl.push(event{t: t + rt, kind: eventFinish, pod: i, gen: p.gen})
		}
		return true, nil
	}
	return false, fmt.Errorf("timeline: pod %s: the allocator refused every node", pod.Name)
}

// evict starts terminating a running pod: its devices are freed after the
// reclaim delay, and then it is pending again.
func (tl *timeline) evict(i int, t float64) {
	p := &tl.sim[i]
	p.state = stateTerminating
	p.gen++
	tl.tenants.terminating[p.tenant] += p.cost
	tl.push(event{t: t + tl.opts.ReclaimDelay, kind: eventFree, pod: i, gen: p.gen})
}

// release gives a running or terminating pod's devices, CPU and memory back
// to its node.
func (tl *timeline) release(i int) error {
	p := &tl.sim[i]
	pod := tl.pods[i].Pod
	r := tl.sched.request(pod)
	st := &tl.sched.states[p.node]
	if r.GPUs > 0 {
		results, ok := st.held[p.uid]
		if !ok {
			return fmt.Errorf("timeline: pod %s holds nothing on %s", pod.Name, tl.fleet.Specs[p.node].Name)
		}
		delete(st.held, p.uid)
		for _, res := range results {
			id := structured.MakeDeviceID(res.Driver, res.Pool, res.Device)
			if res.ShareID != nil {
				st.allocated.AllocatedSharedDeviceIDs.Delete(structured.MakeSharedDeviceID(id, res.ShareID))
				st.allocated.AggregatedCapacity.Remove(structured.NewDeviceConsumedCapacity(id, res.ConsumedCapacity))
				continue
			}
			st.allocated.AllocatedDevices.Delete(id)
		}
	}
	st.node = without(st.node, r, p.gpus)
	st.gen++
	tl.onNode[p.node] = slices.DeleteFunc(tl.onNode[p.node], func(j int) bool { return j == i })
	if p.state == stateTerminating {
		tl.tenants.terminating[p.tenant] -= p.cost
	}
	tl.tenants.used[p.tenant] -= p.cost
	tl.allocated -= pod.Request.Demand()
	tl.dirty[p.node] = true
	tl.budgetDirty[p.tenant] = true
	p.node, p.gpus = -1, nil
	return nil
}

// without is the node after a request placed on gpus has gone: the inverse
// of placement.Node.With.
func without(n placement.Node, r placement.Request, gpus []int) placement.Node {
	out := placement.Node{CPU: n.CPU + r.CPU, Memory: n.Memory + r.Memory, Free: slices.Clone(n.Free)}
	for _, g := range gpus {
		if r.Shared() {
			out.Free[g] += r.Milli
		} else {
			out.Free[g] = placement.WholeGPU
		}
	}
	return out
}

// assignTenants gives each pod a tenant, at random by seed: tenant k with
// probability split[k] / sum(split), or uniformly when split is empty.
func assignTenants(pods int, tenants int, split []float64, seed int) []int {
	rng := newDraw(seed)
	out := make([]int, pods)
	total := 0.0
	for _, w := range split {
		total += w
	}
	for i := range out {
		if len(split) == 0 || total <= 0 {
			out[i] = rng.IntN(tenants)
			continue
		}
		x := rng.Float64() * total
		k := 0
		for k < len(split)-1 && x >= split[k] {
			x -= split[k]
			k++
		}
		out[i] = k
	}
	return out
}

// percentile of sorted values, nearest rank; 0 for none.
func percentile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[min(max(rank, 0), len(sorted)-1)]
}
