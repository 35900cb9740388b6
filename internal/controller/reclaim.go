package controller

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	corev1helpers "k8s.io/component-helpers/scheduling/corev1"
	"k8s.io/component-helpers/scheduling/corev1/nodeaffinity"
	"k8s.io/dynamic-resource-allocation/cel"
	"k8s.io/dynamic-resource-allocation/structured"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/internal/allocation"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

// ReclaimInterval is how often the reclaimer looks for pods of tenants below
// their guarantee that wait for devices. It bounds the first part of an
// owner's wait: a pod found Unschedulable is acted on within one interval;
// then the victims' graceful termination and the scheduler's next try of
// the pod follow.
const ReclaimInterval = 5 * time.Second

var (
	reclaimedClaims = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "tessera", Subsystem: "reclaim", Name: "evicted_claims_total",
		Help: "Claims whose pods reclaim evicted to give a tenant below its guarantee devices back, by the tenant that borrowed them (tenant) and the tenant they went back to (for).",
	}, []string{"tenant", "for"})
	reclaimedMemory = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "tessera", Subsystem: "reclaim", Name: "evicted_gpu_memory_bytes_total",
		Help: "Held GPU memory (the unit of budgets) of the claims reclaim evicted, by the tenant that borrowed it and the tenant it went back to.",
	}, []string{"tenant", "for"})
	reclaimLatency = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: "tessera", Subsystem: "reclaim", Name: "decision_seconds",
		Help:    "From a waiting pod's Unschedulable condition to reclaim's evictions for it.",
		Buckets: []float64{1, 2, 5, 10, 20, 30, 60, 120, 300},
	})
)

func init() { ctrlmetrics.Registry.MustRegister(reclaimedClaims, reclaimedMemory, reclaimLatency) }

// Reclaimer gives tenants below their guarantee (spec.guarantee) back the
// devices that other tenants borrow: when a pod of such a tenant cannot be
// scheduled and kube-scheduler's own allocator, run on a node's full device
// model, would fit its claims once some borrowing pods were gone, it
// evicts those pods through the Eviction API. Which pods is
// tenancy.ChooseVictimsToFit's choice: lowest priority first, then the most
// recently started; never a pod of a tenant that would drop below its own
// guarantee; never more than the pod needs.
//
// Everything is one pass over the cluster each ReclaimInterval, stateless
// between passes: pods already evicted (terminating) count as gone, so a
// pod whose victims are on their way out is not given more.
type Reclaimer struct {
	// client reads from the cache (tenants, namespaces, pods, claims,
	// slices and classes: a pass makes no API request) and evicts.
	client   client.Client
	recorder recorder.EventRecorder
	now      func() time.Time
	models   *deviceModels
	cel      *cel.Cache
	// told holds the waiting pods already told that their tenant holds its
	// guarantee, so that each is told once; only sync touches it.
	told map[types.UID]bool
}

// NewReclaimer returns a reclaimer that reads through c, the manager's
// cached client, and records Events with rec.
func NewReclaimer(c client.Client, rec recorder.EventRecorder) *Reclaimer {
	return &Reclaimer{client: c, recorder: rec, now: time.Now, models: newDeviceModels(),
		cel: cel.NewCache(100, cel.Features{EnableConsumableCapacity: true})}
}

// waitingPod is a pod of a tenant with a guarantee that kube-scheduler
// found no room for, with its claims, none allocated.
type waitingPod struct {
	pod    *corev1.Pod
	tenant *tenancyv1.GPUTenant
	claims []*resourceapi.ResourceClaim
	since  time.Time
}

// heldClaim is an allocated claim, with what reclaim needs to know of it.
type heldClaim struct {
	claim    *resourceapi.ResourceClaim
	tenant   string
	holdings []tenancy.Holding
	// pods are the running pods it is reserved for; nil when any of them
	// is not running (such a claim is never a candidate).
	pods []*corev1.Pod
}

// reclaimPass is the cluster as one pass sees it.
type reclaimPass struct {
	tenants map[string]*tenancyv1.GPUTenant
	// active are the allocated claims not on their way out, by key.
	active map[types.NamespacedName]*heldClaim
	// slices are the published ResourceSlices by pool (Tessera's) and the
	// others by node.
	pools   map[string][]*resourceapi.ResourceSlice
	others  map[string][]*resourceapi.ResourceSlice
	classes allocation.Classes
}

// Reclaim reads pods from the cache: the pending ones of tenants below their
// guarantee, and the running ones that may be its victims.
//
// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch

// sync runs one pass.
func (r *Reclaimer) sync(ctx context.Context) error {
	logger := klog.FromContext(ctx)
	if err := r.learnModels(ctx); err != nil {
		return err
	}
	tenants, err := listTenants(ctx, r.client)
	if err != nil {
		return err
	}
	if !slices.ContainsFunc(tenants, func(t *tenancyv1.GPUTenant) bool { return t.Spec.Guarantee != nil }) {
		return nil
	}
	namespaces, err := listNamespaces(ctx, r.client)
	if err != nil {
		return err
	}
	owners, _ := tenancy.Owners(tenants, namespaces)
	var claimList resourceapi.ResourceClaimList
	if err := r.client.List(ctx, &claimList); err != nil {
		return fmt.Errorf("list claims: %w", err)
	}
	claims := map[types.NamespacedName]*resourceapi.ResourceClaim{}
	for i := range claimList.Items {
		claims[client.ObjectKeyFromObject(&claimList.Items[i])] = &claimList.Items[i]
	}
	waiting, err := r.waiting(ctx, tenants, owners, claims)
	if err != nil || len(waiting) == 0 {
		return err
	}
	pass, err := r.observe(ctx, tenants, owners, claims)
	if err != nil {
		return err
	}
	if r.told == nil {
		r.told = map[types.UID]bool{}
	}
	still := map[types.UID]bool{}
	var errs []error
	for _, w := range waiting {
		still[w.pod.UID] = true
		if err := r.reclaimFor(ctx, pass, w); err != nil {
			errs = append(errs, err)
		}
	}
	for uid := range r.told {
		if !still[uid] {
			delete(r.told, uid)
		}
	}
	if len(errs) > 0 {
		logger.V(2).Info("Reclaim pass had errors", "errors", len(errs))
	}
	return errors.Join(errs...)
}

// learnModels shows every pool's slices to the device models on every
// pass, whether or not a pod waits: a GPU's full device list is only seen
// while nothing is prepared on it, and reclaim needs it once borrowers
// hold the GPU.
func (r *Reclaimer) learnModels(ctx context.Context) error {
	var list resourceapi.ResourceSliceList
	if err := r.client.List(ctx, &list); err != nil {
		return fmt.Errorf("list ResourceSlices: %w", err)
	}
	pools := map[string][]*resourceapi.ResourceSlice{}
	for i := range list.Items {
		if s := &list.Items[i]; s.Spec.Driver == gpuapi.DriverName && s.Spec.NodeName != nil {
			pools[s.Spec.Pool.Name] = append(pools[s.Spec.Pool.Name], s)
		}
	}
	for pool, published := range pools {
		r.models.node(pool, published)
	}
	r.models.forget(pools)
	return nil
}

// waiting lists the pods that kube-scheduler marked Unschedulable, of
// namespaces of one tenant that has a guarantee, whose claims all exist and
// none is allocated; oldest first.
func (r *Reclaimer) waiting(ctx context.Context, tenants []*tenancyv1.GPUTenant, owners map[string][]string, claims map[types.NamespacedName]*resourceapi.ResourceClaim) ([]waitingPod, error) {
	pods, err := unboundPods(ctx, r.client)
	if err != nil {
		return nil, err
	}
	var out []waitingPod
	for i := range pods {
		pod := &pods[i]
		if pod.DeletionTimestamp != nil || pod.Spec.NodeName != "" || pod.Status.Phase != corev1.PodPending {
			continue
		}
		cond := podCondition(pod, corev1.PodScheduled)
		if cond == nil || cond.Status != corev1.ConditionFalse || cond.Reason != corev1.PodReasonUnschedulable {
			continue
		}
		o := owners[pod.Namespace]
		if len(o) != 1 {
			continue
		}
		t := findTenant(tenants, o[0])
		if t == nil || t.Spec.Guarantee == nil {
			continue
		}
		podClaims, ok := podClaims(pod, claims)
		if !ok || len(podClaims) == 0 {
			continue
		}
		out = append(out, waitingPod{pod: pod, tenant: t, claims: podClaims, since: cond.LastTransitionTime.Time})
	}
	slices.SortFunc(out, func(a, b waitingPod) int {
		if c := a.pod.CreationTimestamp.Compare(b.pod.CreationTimestamp.Time); c != 0 {
			return c
		}
		return cmp.Compare(a.pod.Namespace+"/"+a.pod.Name, b.pod.Namespace+"/"+b.pod.Name)
	})
	return out, nil
}

func podCondition(pod *corev1.Pod, t corev1.PodConditionType) *corev1.PodCondition {
	for i := range pod.Status.Conditions {
		if pod.Status.Conditions[i].Type == t {
			return &pod.Status.Conditions[i]
		}
	}
	return nil
}

// podClaims are the pod's claims, found by name (a template's claim by the
// name the pod's status records); false when one is missing or any is
// allocated already (a claim shared with a running pod fixes the node,
// which reclaim does not model).
func podClaims(pod *corev1.Pod, claims map[types.NamespacedName]*resourceapi.ResourceClaim) ([]*resourceapi.ResourceClaim, bool) {
	var out []*resourceapi.ResourceClaim
	for _, pc := range pod.Spec.ResourceClaims {
		name := ""
		switch {
		case pc.ResourceClaimName != nil:
			name = *pc.ResourceClaimName
		default:
			for _, st := range pod.Status.ResourceClaimStatuses {
				if st.Name == pc.Name && st.ResourceClaimName != nil {
					name = *st.ResourceClaimName
				}
			}
		}
		c, ok := claims[types.NamespacedName{Namespace: pod.Namespace, Name: name}]
		if name == "" || !ok || c.Status.Allocation != nil || c.DeletionTimestamp != nil {
			return nil, false
		}
		out = append(out, c)
	}
	return out, true
}

// observe reads what one pass needs beyond the waiting pods: the pods the
// claims are reserved for, the allocated claims with their tenants and costs, the slices and
// the classes.
func (r *Reclaimer) observe(ctx context.Context, tenants []*tenancyv1.GPUTenant, owners map[string][]string, claims map[types.NamespacedName]*resourceapi.ResourceClaim) (*reclaimPass, error) {
	pods, err := reservedPods(ctx, r.client, claims)
	if err != nil {
		return nil, err
	}
	var sliceList resourceapi.ResourceSliceList
	if err := r.client.List(ctx, &sliceList); err != nil {
		return nil, fmt.Errorf("list ResourceSlices: %w", err)
	}
	var classList resourceapi.DeviceClassList
	if err := r.client.List(ctx, &classList); err != nil {
		return nil, fmt.Errorf("list DeviceClasses: %w", err)
	}
	pass := &reclaimPass{
		tenants: map[string]*tenancyv1.GPUTenant{}, active: map[types.NamespacedName]*heldClaim{},
		pools: map[string][]*resourceapi.ResourceSlice{}, others: map[string][]*resourceapi.ResourceSlice{},
		classes: allocation.NewClasses(ptrs(classList.Items)),
	}
	for _, t := range tenants {
		pass.tenants[t.Name] = t
	}
	for i := range sliceList.Items {
		s := &sliceList.Items[i]
		switch {
		case s.Spec.NodeName == nil:
		case s.Spec.Driver == gpuapi.DriverName:
			pass.pools[s.Spec.Pool.Name] = append(pass.pools[s.Spec.Pool.Name], s)
		default:
			pass.others[*s.Spec.NodeName] = append(pass.others[*s.Spec.NodeName], s)
		}
	}
	memory := tenancy.DeviceMemory(ptrs(sliceList.Items))
	for key, c := range claims {
		if c.Status.Allocation == nil || leaving(c, pods) {
			continue
		}
		h := &heldClaim{claim: c}
		if o := owners[c.Namespace]; len(o) == 1 {
			h.tenant = o[0]
		}
		if st := tenancy.ClaimState(c); st == tenancy.Admitted || st == tenancy.Ungated {
			held, err := tenancy.ClaimHoldings(c, memory)
			if err != nil {
				// Its devices are not published (a kubelet restarting):
				// it cannot be costed, so it is never a victim, and its
				// tenant's usage is counted without it.
				klog.FromContext(ctx).V(2).Info("Claim not costed for reclaim", "claim", klog.KObj(c), "err", err)
			}
			h.holdings = held
		}
		h.pods = reservedRunning(c, pods)
		pass.active[key] = h
	}
	return pass, nil
}

// leaving reports whether every pod a claim is reserved for is
// terminating or gone: its devices are on their way back, and count as
// free. A claim reserved for no pod (allocated, pod not yet bound) stays.
func leaving(c *resourceapi.ResourceClaim, pods map[types.UID]*corev1.Pod) bool {
	n := 0
	for _, ref := range c.Status.ReservedFor {
		if ref.Resource != "pods" || ref.APIGroup != "" {
			return false
		}
		n++
		if p, ok := pods[ref.UID]; ok && p.DeletionTimestamp == nil && p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
			return false
		}
	}
	return n > 0
}

// reservedRunning are the running pods the claim is reserved for; nil
// unless every pod it is reserved for runs.
func reservedRunning(c *resourceapi.ResourceClaim, pods map[types.UID]*corev1.Pod) []*corev1.Pod {
	var out []*corev1.Pod
	for _, ref := range c.Status.ReservedFor {
		p, ok := pods[ref.UID]
		if ref.Resource != "pods" || ref.APIGroup != "" || !ok || p.Status.Phase != corev1.PodRunning || p.DeletionTimestamp != nil {
			return nil
		}
		out = append(out, p)
	}
	return out
}

// holdingsOf are the holdings of tenant's active claims, less those of skip.
func (p *reclaimPass) holdingsOf(tenant string, skip map[types.NamespacedName]bool) []tenancy.Holding {
	var out []tenancy.Holding
	for key, h := range p.active {
		if h.tenant == tenant && !skip[key] {
			out = append(out, h.holdings...)
		}
	}
	return out
}

// holdings are every tenant's usage and guarantee, in the unit of budgets.
func (p *reclaimPass) holdings() map[string]tenancy.TenantHolding {
	out := map[string]tenancy.TenantHolding{}
	for name, t := range p.tenants {
		out[name] = tenancy.TenantHolding{Used: tenancy.Cost(t, p.holdingsOf(name, nil)), Guarantee: tenancy.Guaranteed(t)}
	}
	return out
}

// belowGuarantee reports whether u is short of g in memory or in a class g
// names.
func belowGuarantee(u, g tenancy.Usage) bool {
	if u.Memory < g.Memory {
		return true
	}
	for c, n := range g.Devices {
		if u.Devices[c] < n {
			return true
		}
	}
	return false
}

// withinGuarantee reports whether u stays at or under g in memory and in
// every class g names.
func withinGuarantee(u, g tenancy.Usage) bool {
	if u.Memory > g.Memory {
		return false
	}
	for c, n := range g.Devices {
		if u.Devices[c] > n {
			return false
		}
	}
	return true
}

// candidates are the claims on pool that reclaim may take for starving:
// claims of other tenants, costed and reserved only for running pods, each
// with its marginal cost to its tenant (what the tenant's usage drops by
// without it: a share under Exclusive sharing may free nothing while the
// tenant keeps another share of its GPU).
func (p *reclaimPass) candidates(pool, starving string) []tenancy.RunningClaim {
	var out []tenancy.RunningClaim
	for key, h := range p.active {
		t := p.tenants[h.tenant]
		if t == nil || h.tenant == starving || len(h.pods) == 0 || len(h.holdings) == 0 || !onPool(h.claim, pool) {
			continue
		}
		with := tenancy.Cost(t, p.holdingsOf(h.tenant, nil))
		without := tenancy.Cost(t, p.holdingsOf(h.tenant, map[types.NamespacedName]bool{key: true}))
		rc := tenancy.RunningClaim{Claim: key, Tenant: h.tenant, Cost: minus(with, without)}
		for i, pod := range h.pods {
			// A claim shared by several pods is as protected as the most
			// protected of them.
			prio := int32(0)
			if pod.Spec.Priority != nil {
				prio = *pod.Spec.Priority
			}
			started := pod.CreationTimestamp.Time
			if pod.Status.StartTime != nil {
				started = pod.Status.StartTime.Time
			}
			if i == 0 || prio > rc.Priority {
				rc.Priority = prio
			}
			if i == 0 || started.Before(rc.Started) {
				rc.Started = started
			}
		}
		out = append(out, rc)
	}
	return out
}

func onPool(c *resourceapi.ResourceClaim, pool string) bool {
	for _, r := range c.Status.Allocation.Devices.Results {
		if r.Driver == gpuapi.DriverName && r.Pool == pool {
			return true
		}
	}
	return false
}

func minus(a, b tenancy.Usage) tenancy.Usage {
	out := tenancy.Usage{Memory: a.Memory - b.Memory, Devices: map[string]int64{}}
	for c, n := range a.Devices {
		if d := n - b.Devices[c]; d != 0 {
			out.Devices[c] = d
		}
	}
	return out
}

// state is the allocated state of every active claim but the victims.
func (p *reclaimPass) state(victims []tenancy.RunningClaim) structured.AllocatedState {
	gone := map[types.NamespacedName]bool{}
	for _, v := range victims {
		gone[v.Claim] = true
	}
	st := allocation.NewState()
	for key, h := range p.active {
		if !gone[key] {
			allocation.Record(st, h.claim.Status.Allocation)
		}
	}
	return st
}

// sharingTaints returns model with the taints that sharing's
// DeviceTaintRules would give its time-shared GPUs once the victims are
// gone (tenancy.TaintRules over the shares the other active claims hold):
// a GPU that only victims held shares of is free again, one that another
// group still holds keeps that group's taint. The scheduler applies the
// rules to the devices it sees; the model carries them on the devices.
func (p *reclaimPass) sharingTaints(model []*resourceapi.ResourceSlice, victims []tenancy.RunningClaim) []*resourceapi.ResourceSlice {
	gone := map[types.NamespacedName]bool{}
	for _, v := range victims {
		gone[v.Claim] = true
	}
	var holders []tenancy.ShareHolder
	for key, h := range p.active {
		if gone[key] {
			continue
		}
		if d := tenancy.SharedDevices(h.claim); len(d) > 0 {
			holders = append(holders, tenancy.ShareHolder{Claim: key, Group: tenancy.SharingGroup(p.tenants[h.tenant]), Devices: d})
		}
	}
	values := make([]resourceapi.ResourceSlice, len(model))
	for i, s := range model {
		values[i] = *s
	}
	taints := map[tenancy.DeviceID]resourceapi.DeviceTaint{}
	for _, rule := range tenancy.TaintRules(tenancy.SharedGPUs(values), tenancy.Holders(holders)) {
		sel := rule.Spec.DeviceSelector
		taints[tenancy.DeviceID{Driver: *sel.Driver, Pool: *sel.Pool, Device: *sel.Device}] = rule.Spec.Taint
	}
	if len(taints) == 0 {
		return model
	}
	out := make([]*resourceapi.ResourceSlice, len(model))
	for i, s := range model {
		out[i] = s
		for j, d := range s.Spec.Devices {
			taint, ok := taints[tenancy.DeviceID{Driver: s.Spec.Driver, Pool: s.Spec.Pool.Name, Device: d.Name}]
			if !ok {
				continue
			}
			if out[i] == s {
				out[i] = s.DeepCopy()
			}
			out[i].Spec.Devices[j].Taints = append(out[i].Spec.Devices[j].Taints, taint)
		}
	}
	return out
}

// plan is one node's answer for a waiting pod.
type plan struct {
	pool    string
	victims []tenancy.RunningClaim
	results []resourceapi.AllocationResult
}

// reclaimFor frees room for one waiting pod, if its tenant is below its
// guarantee and some node can make room within it.
func (r *Reclaimer) reclaimFor(ctx context.Context, pass *reclaimPass, w waitingPod) error {
	logger := klog.FromContext(ctx).WithValues("pod", klog.KObj(w.pod), "tenant", w.tenant.Name)
	holdings := pass.holdings()
	own := holdings[w.tenant.Name]
	if !belowGuarantee(own.Used, own.Guarantee) {
		logger.V(4).Info("Not reclaiming: the tenant holds its guarantee")
		if !r.told[w.pod.UID] {
			r.told[w.pod.UID] = true
			r.recorder.Eventf(w.pod, nil, corev1.EventTypeNormal, tenancyv1.ReasonGuaranteeHeld, "Reclaim",
				"GPUTenant %s holds its guarantee (spec.guarantee): nothing is reclaimed for this pod, which waits for free devices", w.tenant.Name)
		}
		return nil
	}
	pools := make([]string, 0, len(pass.pools))
	for pool := range pass.pools {
		pools = append(pools, pool)
	}
	slices.Sort(pools)
	var best *plan
	var errs []error
	for _, pool := range pools {
		pl, err := r.planOn(ctx, pass, w, pool, holdings)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if pl == nil {
			continue
		}
		if len(pl.victims) == 0 {
			// It fits as things stand (victims of an earlier pass are on
			// their way out): the scheduler will place it. Its room is
			// taken from the next waiting pods of this pass.
			pass.take(w, pl)
			return nil
		}
		if best == nil || len(pl.victims) < len(best.victims) {
			best = pl
		}
	}
	if best == nil {
		logger.V(4).Info("Not reclaiming: no node would fit the pod within its tenant's guarantee", "errors", len(errs))
		return errors.Join(errs...)
	}
	if err := r.evict(ctx, w, best); err != nil {
		return err
	}
	pass.take(w, best)
	return nil
}

// planOn asks whether the pod would fit pool's node with nothing evicted,
// or which victims would make it fit (nil: none would, within the
// guarantees).
func (r *Reclaimer) planOn(ctx context.Context, pass *reclaimPass, w waitingPod, pool string, holdings map[string]tenancy.TenantHolding) (*plan, error) {
	model := r.models.node(pool, pass.pools[pool])
	if len(model) == 0 || model[0].Spec.NodeName == nil {
		return nil, nil
	}
	nodeName := *model[0].Spec.NodeName
	if ok, err := r.selects(ctx, w.pod, nodeName); err != nil || !ok {
		return nil, err
	}
	model = append(model, pass.others[nodeName]...)
	node := &corev1.Node{}
	node.Name = nodeName
	ownHeld := pass.holdingsOf(w.tenant.Name, nil)
	guarantee := tenancy.Guaranteed(w.tenant)
	memory := tenancy.DeviceMemory(model)
	var fitErr error
	var last []resourceapi.AllocationResult
	fits := func(victims []tenancy.RunningClaim) bool {
		alloc, err := allocation.New(ctx, pass.state(victims), pass.classes, pass.sharingTaints(model, victims), r.cel)
		if err != nil {
			fitErr = err
			return false
		}
		results, err := alloc.Allocate(ctx, node, w.claims)
		if err != nil {
			fitErr = err
			return false
		}
		if results == nil {
			return false
		}
		// The pod's claims must keep its tenant within its guarantee:
		// reclaim gives a guarantee back, it does not lend.
		held := slices.Clone(ownHeld)
		for i, c := range w.claims {
			allocated := c.DeepCopy()
			allocated.Status.Allocation = &results[i]
			h, err := tenancy.ClaimHoldings(allocated, memory)
			if err != nil {
				fitErr = err
				return false
			}
			held = append(held, h...)
		}
		if !withinGuarantee(tenancy.Cost(w.tenant, held), guarantee) {
			return false
		}
		last = results
		return true
	}
	victims, ok := tenancy.ChooseVictimsToFit(pass.candidates(pool, w.tenant.Name), holdings, w.tenant.Name, fits)
	if fitErr != nil {
		return nil, fmt.Errorf("model pod %s on node %s: %w", klog.KObj(w.pod), nodeName, fitErr)
	}
	if !ok {
		return nil, nil
	}
	// The last call of fits that held was for the victims returned only if
	// nothing was dropped after it; ask once more for their allocation.
	last = nil
	if !fits(victims) {
		return nil, fmt.Errorf("model pod %s on node %s: the victims chosen no longer fit", klog.KObj(w.pod), nodeName)
	}
	return &plan{pool: pool, victims: victims, results: last}, nil
}

// selects reports whether the pod may go to the node as kube-scheduler's
// NodeAffinity and TaintToleration filters see it: its nodeSelector and
// required node affinity match the node's labels, and it tolerates every
// NoSchedule and NoExecute taint of the node (read from the cache of
// nodes). A node that is gone takes nothing. Preferred affinity and
// PreferNoSchedule taints only score nodes; they never keep a pod off one.
func (r *Reclaimer) selects(ctx context.Context, pod *corev1.Pod, node string) (bool, error) {
	n := &corev1.Node{}
	switch err := r.client.Get(ctx, types.NamespacedName{Name: node}, n); {
	case apierrors.IsNotFound(err):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("get node %s: %w", node, err)
	}
	if ok, err := nodeaffinity.GetRequiredNodeAffinity(pod).Match(n); err != nil || !ok {
		if err != nil {
			return false, fmt.Errorf("match node affinity of pod %s with node %s: %w", klog.KObj(pod), node, err)
		}
		return false, nil
	}
	// Comparison operators in tolerations (TaintTolerationComparisonOperators)
	// are alpha and off in Kubernetes 1.37: the scheduler matches none.
	_, untolerated := corev1helpers.FindMatchingUntoleratedTaint(klog.FromContext(ctx), n.Spec.Taints, pod.Spec.Tolerations, func(t *corev1.Taint) bool {
		return t.Effect == corev1.TaintEffectNoSchedule || t.Effect == corev1.TaintEffectNoExecute
	}, false)
	return !untolerated, nil
}

// take enters a plan into the pass: the victims leave, the pod's claims
// hold what the allocator gave them.
func (p *reclaimPass) take(w waitingPod, pl *plan) {
	for _, v := range pl.victims {
		delete(p.active, v.Claim)
	}
	memory := tenancy.DeviceMemory(p.pools[pl.pool])
	for i, c := range w.claims {
		allocated := c.DeepCopy()
		allocated.Status.Allocation = &pl.results[i]
		held, _ := tenancy.ClaimHoldings(allocated, memory)
		p.active[client.ObjectKeyFromObject(c)] = &heldClaim{claim: allocated, tenant: w.tenant.Name, holdings: held}
	}
}

// evict evicts the victims' pods and says so on both sides.
func (r *Reclaimer) evict(ctx context.Context, w waitingPod, pl *plan) error {
	logger := klog.FromContext(ctx)
	var errs []error
	var names []string
	for _, v := range pl.victims {
		claim := &resourceapi.ResourceClaim{}
		if err := r.client.Get(ctx, v.Claim, claim); err != nil {
			errs = append(errs, fmt.Errorf("get claim %s to reclaim: %w", v.Claim, err))
			continue
		}
		msg := fmt.Sprintf("reclaimed by GPUTenant %s for pod %s: GPUTenant %s borrows these devices above its guarantee (spec.guarantee), and %s is below its own",
			w.tenant.Name, klog.KObj(w.pod), v.Tenant, w.tenant.Name)
		if err := evictClaimPods(ctx, r.client, r.recorder, claim, tenancyv1.ReasonReclaimed, msg); err != nil {
			errs = append(errs, err)
			continue
		}
		reclaimedClaims.WithLabelValues(v.Tenant, w.tenant.Name).Inc()
		reclaimedMemory.WithLabelValues(v.Tenant, w.tenant.Name).Add(float64(v.Cost.Memory))
		names = append(names, v.Claim.String())
	}
	if len(names) > 0 {
		logger.Info("Reclaimed borrowed devices", "pod", klog.KObj(w.pod), "tenant", w.tenant.Name, "node", pl.pool, "claims", names)
		r.recorder.Eventf(w.pod, nil, corev1.EventTypeNormal, tenancyv1.ReasonReclaiming, "Reclaim",
			"GPUTenant %s is below its guarantee: evicting the pods of %d borrowed claim(s) on node %s so that this pod fits",
			w.tenant.Name, len(names), pl.pool)
		if !w.since.IsZero() {
			reclaimLatency.Observe(r.now().Sub(w.since).Seconds())
		}
	}
	return errors.Join(errs...)
}

// run syncs every interval until ctx ends. A failed pass is logged and the
// next one starts from the cluster as it then is.
func (r *Reclaimer) run(ctx context.Context, interval time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if err := r.sync(ctx); err != nil {
			klog.FromContext(ctx).Error(err, "Reclaiming guarantees")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
