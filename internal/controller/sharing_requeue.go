package controller

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

// RequeueReconciler gets kube-scheduler to retry the pods it turned away
// while it counted a share twice.
//
// kube-scheduler 1.37 keeps a claim it allocated "in flight" until its
// binding cycle's PreBind ends, which, for devices with binding conditions,
// is when it sees them met (it polls every 5 s). Its informer sees the claim
// allocated long before that, and while both hold the claim, the consumed
// capacity of a share is counted twice (dynamicresources' GatherAllocatedState
// adds the in-flight claims' capacity to the allocated claims'). A pod tried
// in that window finds the GPU fuller than it is and is parked as
// unschedulable; the window's end is no cluster event, so nothing retries
// the pod until the scheduler's 5-minute flush of unschedulable pods.
//
// The window ends in one of two ways:
//   - The pod whose share was waited for is bound, right after PreBind. That
//     is observable as it happens.
//   - The pod is deleted while PreBind waits. Its claim is deallocated and
//     then deleted; the scheduler requeues pods on the deallocation, while it
//     still holds the claim in flight, and lets go of it only when its next
//     poll finds the claim gone: PreBind fails and Unreserve drops the
//     in-flight claim, which is no event that DRA's pods are retried on
//     (kube-scheduler offers it as AssignedPodDelete, which dynamicresources
//     does not register for). So this end is not observable; it comes at most
//     one poll after the claim is gone, and the reconciler acts releaseDelay
//     after the claim's deletion.
//
// A controller that was down saw neither end: when it starts, it acts once,
// releaseDelay after it leads (nudgeAtStart).
//
// Then, if any pod with claims is still unbound, this reconciler stamps the
// sharing taint of that share's GPU again (its timeAdded; key, value and
// effect are untouched, and the taint is NoSchedule, for which the time means
// nothing). The scheduler sees every DeviceTaintRule change as a change of the
// ResourceSlices it patches, and retries every pod that DRA turned away on any
// ResourceSlice change.
type RequeueReconciler struct {
	client client.Client
	now    func() time.Time

	// after is time.After; tests replace it.
	after func(time.Duration) <-chan time.Time

	mu sync.Mutex
	// released holds, for a claim deallocated and not yet deleted, the rules
	// of the GPUs whose shares it held behind binding conditions: a deleted
	// claim has no allocation left to read them from.
	released map[types.UID][]reconcile.Request
}

// schedulerBindingPoll is how often kube-scheduler 1.37's PreBind checks the
// binding conditions of the claims it waits for (a constant of
// dynamicresources).
const schedulerBindingPoll = 5 * time.Second

// releaseDelay is how long after a claim's deletion the scheduler has surely
// dropped its in-flight copy: one poll, and time for the poll's goroutine to
// run on a loaded control plane.
const releaseDelay = schedulerBindingPoll + 2*time.Second

var _ reconcile.Reconciler = &RequeueReconciler{}

// Pending pods: when a pod whose share the scheduler waited for is bound
// while others wait, the controller stamps that GPU's sharing taint again so
// that the scheduler retries them.
//
// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch

// Reconcile stamps the sharing taint named by req again when a pod with
// claims waits to be scheduled.
func (r *RequeueReconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	waiting, err := r.unboundPod(ctx)
	if err != nil || waiting == nil {
		return reconcile.Result{}, err
	}
	rule := &resourceapi.DeviceTaintRule{}
	if err := r.client.Get(ctx, req.NamespacedName, rule); err != nil {
		// No rule: the GPU was released meanwhile, and deleting its rule
		// was itself a change the scheduler retries pods on.
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	updated := rule.DeepCopy()
	now := r.now
	if now == nil {
		now = time.Now
	}
	stamp := tenancy.Restamp(rule.Spec.Taint.TimeAdded, now())
	updated.Spec.Taint.TimeAdded = &stamp
	if err := r.client.Update(ctx, updated, client.FieldOwner(fieldManager)); err != nil {
		return reconcile.Result{}, fmt.Errorf("stamp DeviceTaintRule %s again: %w", rule.Name, err)
	}
	schedulerNudges.Inc()
	klog.FromContext(ctx).V(2).Info("Stamped sharing taint again so that the scheduler retries waiting pods", "rule", rule.Name, "waitingPod", klog.KObj(waiting))
	return reconcile.Result{}, nil
}

// unboundPod is a pending pod with claims that no node has yet, or nil.
func (r *RequeueReconciler) unboundPod(ctx context.Context) (*corev1.Pod, error) {
	pods, err := unboundPods(ctx, r.client)
	if err != nil {
		return nil, err
	}
	for i := range pods {
		p := &pods[i]
		if p.Spec.NodeName == "" && len(p.Spec.ResourceClaims) > 0 && p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodPending {
			return p, nil
		}
	}
	return nil, nil
}

// boundShares maps a pod that has just been bound to the sharing taint rules
// of the GPUs its claims hold shares of behind binding conditions.
func (r *RequeueReconciler) boundShares(ctx context.Context, old, pod *corev1.Pod) []reconcile.Request {
	if old.Spec.NodeName != "" || pod.Spec.NodeName == "" {
		return nil
	}
	names := map[string]bool{}
	for _, c := range pod.Spec.ResourceClaims {
		if c.ResourceClaimName != nil {
			names[*c.ResourceClaimName] = true
		}
	}
	for _, s := range pod.Status.ResourceClaimStatuses {
		if s.ResourceClaimName != nil {
			names[*s.ResourceClaimName] = true
		}
	}
	var out []reconcile.Request
	for name := range names {
		claim := &resourceapi.ResourceClaim{}
		if err := r.client.Get(ctx, types.NamespacedName{Namespace: pod.Namespace, Name: name}, claim); err != nil {
			continue // gone already: its deletion is handled by claimChanged
		}
		out = append(out, waitedRules(claim)...)
	}
	return out
}

// waitedRules are the requests for the sharing taint rules of the GPUs whose
// shares claim's allocation holds behind binding conditions.
func waitedRules(claim *resourceapi.ResourceClaim) []reconcile.Request {
	var out []reconcile.Request
	for _, d := range tenancy.WaitedShares(claim) {
		out = append(out, reconcile.Request{NamespacedName: types.NamespacedName{Name: tenancy.TaintRuleName(d)}})
	}
	return out
}

// claimChanged follows a claim that held waited shares from its deallocation
// to its deletion, and returns the rules to stamp again releaseDelay after
// the deletion (nil for any other change). A claim deleted while still
// allocated (its finalizer removed by hand) names its rules itself.
func (r *RequeueReconciler) claimChanged(old, claim *resourceapi.ResourceClaim, deleted bool) []reconcile.Request {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case deleted:
		rules := r.released[claim.UID]
		delete(r.released, claim.UID)
		return append(rules, waitedRules(claim)...)
	case claim.Status.Allocation != nil:
		// Allocated again (a claim of its own, not generated for a pod).
		delete(r.released, claim.UID)
	case old != nil && old.Status.Allocation != nil:
		if rules := waitedRules(old); len(rules) > 0 {
			if r.released == nil {
				r.released = map[types.UID][]reconcile.Request{}
			}
			r.released[claim.UID] = rules
		}
	}
	return nil
}

// claimEvents follows claims (claimChanged) and stamps the rules of a deleted
// one releaseDelay later.
func (r *RequeueReconciler) claimEvents() handler.TypedEventHandler[client.Object, reconcile.Request] {
	return handler.TypedFuncs[client.Object, reconcile.Request]{
		UpdateFunc: func(_ context.Context, e event.TypedUpdateEvent[client.Object], _ workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			old, okOld := e.ObjectOld.(*resourceapi.ResourceClaim)
			claim, okNew := e.ObjectNew.(*resourceapi.ResourceClaim)
			if okOld && okNew {
				r.claimChanged(old, claim, false)
			}
		},
		DeleteFunc: func(_ context.Context, e event.TypedDeleteEvent[client.Object], q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			if claim, ok := e.Object.(*resourceapi.ResourceClaim); ok {
				for _, req := range r.claimChanged(nil, claim, true) {
					q.AddAfter(req, releaseDelay)
				}
			}
		},
	}
}

// nudgeAtStart sends one sharing taint rule (the first by name) to out,
// releaseDelay after it is called: a controller that starts cannot know which
// binding cycles ended while it was down, and the scheduler retries every pod
// DRA turned away on a change of any rule. Reconcile stamps it only if a pod
// waits. Errors are logged, not returned, as they would stop the manager.
func (r *RequeueReconciler) nudgeAtStart(ctx context.Context, out chan<- event.GenericEvent) {
	after := r.after
	if after == nil {
		after = time.After
	}
	select {
	case <-ctx.Done():
		return
	case <-after(releaseDelay):
	}
	rules, err := sharingRules(ctx, r.client)
	if err != nil {
		klog.FromContext(ctx).Error(err, "Cannot nudge the scheduler at start")
		return
	}
	if len(rules) == 0 {
		return
	}
	first := slices.MinFunc(rules, func(a, b resourceapi.DeviceTaintRule) int { return strings.Compare(a.Name, b.Name) })
	select {
	case out <- event.GenericEvent{Object: &first}:
	case <-ctx.Done():
	}
}

// SetupWithManager watches pods being bound and claims being deleted, and
// nudges the scheduler once when the controller starts leading. The
// manager's cache holds only pending pods (Run), which are the ones being
// bound and the ones waiting.
func (r *RequeueReconciler) SetupWithManager(mgr ctrl.Manager) error {
	start := make(chan event.GenericEvent, 1)
	// A RunnableFunc runs only while this replica leads, after the caches
	// have synced.
	if err := mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
		r.nudgeAtStart(ctx, start)
		return nil
	})); err != nil {
		return fmt.Errorf("add start nudge: %w", err)
	}
	bound := handler.TypedFuncs[client.Object, reconcile.Request]{
		UpdateFunc: func(ctx context.Context, e event.TypedUpdateEvent[client.Object], q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			old, okOld := e.ObjectOld.(*corev1.Pod)
			pod, okNew := e.ObjectNew.(*corev1.Pod)
			if !okOld || !okNew {
				return
			}
			for _, req := range r.boundShares(ctx, old, pod) {
				q.Add(req)
			}
		},
	}
	return ctrl.NewControllerManagedBy(mgr).
		Named("sharing-requeue").
		Watches(&corev1.Pod{}, bound).
		Watches(&resourceapi.ResourceClaim{}, r.claimEvents()).
		WatchesRawSource(source.Channel(start, &handler.EnqueueRequestForObject{})).
		Complete(r)
}
