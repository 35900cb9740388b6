package controller

import (
	"context"
	"fmt"
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
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

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
// The end of the window is observable: the pod whose share was waited for is
// bound right after PreBind. Then, if any pod with claims is still unbound,
// this reconciler stamps the sharing taint of that share's GPU again (its
// timeAdded; key, value and effect are untouched, and the taint is NoSchedule,
// for which the time means nothing). The scheduler sees every DeviceTaintRule
// change as a change of the ResourceSlices it patches, and retries every pod
// that DRA turned away on any ResourceSlice change.
type RequeueReconciler struct {
	client client.Client
	now    func() time.Time
}

var _ reconcile.Reconciler = &RequeueReconciler{}

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
	klog.FromContext(ctx).V(2).Info("Stamped sharing taint again so that the scheduler retries waiting pods", "rule", rule.Name, "waitingPod", klog.KObj(waiting))
	return reconcile.Result{}, nil
}

// unboundPod is a pending pod with claims that no node has yet, or nil.
func (r *RequeueReconciler) unboundPod(ctx context.Context) (*corev1.Pod, error) {
	var pods corev1.PodList
	if err := r.client.List(ctx, &pods); err != nil {
		return nil, fmt.Errorf("list pods: %w", err)
	}
	for i := range pods.Items {
		p := &pods.Items[i]
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
			continue // gone already: its deallocation retried the waiting pods
		}
		for _, d := range tenancy.WaitedShares(claim) {
			out = append(out, reconcile.Request{NamespacedName: types.NamespacedName{Name: tenancy.TaintRuleName(d)}})
		}
	}
	return out
}

// SetupWithManager watches pods being bound. The manager's cache holds only
// pending pods (Run), which are the ones being bound and the ones waiting.
func (r *RequeueReconciler) SetupWithManager(mgr ctrl.Manager) error {
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
		Complete(r)
}
