package controller

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/recorder"
	"sigs.k8s.io/controller-runtime/pkg/source"

	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

// clusterKey is the request that stands for the cluster-wide objects (the
// untenanted and outsiders bindings) rather than one tenant; GPUTenant names are never empty.
var clusterKey = reconcile.Request{}

// TenantReconciler keeps each GPUTenant's enforcement objects (its policy
// binding, per-namespace ResourceQuotas, dedicated DeviceClasses) equal to
// what pkg/tenancy derives from it, owned by it so they go with it, and
// writes its status: namespaces, conflicts, usage and conditions.
type TenantReconciler struct {
	client     client.Client
	recorder   recorder.EventRecorder
	ledger     *ledger
	catalog    *deviceCatalog
	untenanted Untenanted
	decided    <-chan event.GenericEvent
	// showbackEvery is how often status.showback is brought up to date.
	showbackEvery time.Duration
}

var _ reconcile.Reconciler = &TenantReconciler{}

// The chart's controller ClusterRole is generated from the rbac markers of
// this package (make generate-rbac). What the controller writes is narrowed
// as far as RBAC can say it. The controller writes them by server-side apply:
// a patch, and a create where the object does not exist yet (the API server
// asks RBAC for both), never an update. Where the name is fixed, patch is
// narrowed by resourceNames (RBAC cannot narrow create); where it is not
// (tenants' bindings, dedicated classes, one taint rule per shared GPU), the
// chart's controller-scope ValidatingAdmissionPolicy lets the controller's
// account write only objects labelled as its own. Each tenant has one
// binding, named after it, so patch cannot be narrowed by name; the API
// server applies no admission policy to bindings, so no policy narrows it
// either. The controller deletes only the
// untenanted binding; tenants' bindings go with their tenant (owner
// references, the garbage collector).
//
// +kubebuilder:rbac:groups=tenancy.tessera.dev,resources=gputenants,verbs=get;list;watch
// +kubebuilder:rbac:groups=tenancy.tessera.dev,resources=gputenants/status,verbs=get;update;patch
// +kubebuilder:rbac:groups="",resources=namespaces,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=resourcequotas,verbs=get;list;watch;create
// +kubebuilder:rbac:groups="",resources=resourcequotas,resourceNames=tessera-gpu-tenant,verbs=patch;delete
// +kubebuilder:rbac:groups=resource.k8s.io,resources=deviceclasses,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups=admissionregistration.k8s.io,resources=validatingadmissionpolicybindings,verbs=get;list;watch;create;patch
// +kubebuilder:rbac:groups=admissionregistration.k8s.io,resources=validatingadmissionpolicybindings,resourceNames=untenanted.tenancy.tessera.dev,verbs=delete

// Reconcile brings one tenant (or, for clusterKey, the untenanted binding) in line.
func (r *TenantReconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	if err := r.reconcileUntenanted(ctx); err != nil {
		return reconcile.Result{}, err
	}
	if req == clusterKey {
		return reconcile.Result{}, nil
	}
	t := &tenancyv1.GPUTenant{}
	if err := r.client.Get(ctx, req.NamespacedName, t); err != nil {
		if apierrors.IsNotFound(err) {
			forgetTenantMetrics(req.Name)
			tenantShowback.forget(req.Name)
			return reconcile.Result{}, nil
		}
		return reconcile.Result{}, fmt.Errorf("get GPUTenant %s: %w", req.Name, err)
	}
	tenants, err := listTenants(ctx, r.client)
	if err != nil {
		return reconcile.Result{}, err
	}
	own, conflicting, err := tenantNamespaces(ctx, r.client, t, tenants)
	if err != nil {
		return reconcile.Result{}, err
	}
	if _, err := tenancy.Selector(t); err != nil {
		// Nothing is selected: the tenant's namespaces are untenanted until
		// the selector is fixed. Say so in Ready.
		return reconcile.Result{}, r.writeStatus(ctx, t, nil, nil, tenancy.Usage{}, "", err)
	}
	applyErr := errors.Join(
		r.applyBinding(ctx, t),
		r.applyQuotas(ctx, t, own),
		r.applyClasses(ctx, t),
	)
	usage, admitted, memory, usageErr := r.usage(ctx, t, tenants)
	overCommitted, fleetErr := guaranteeOverCommitment(ctx, r.client, tenants)
	usageErr = errors.Join(usageErr, fleetErr)
	// Before the status: its showback summary counts the usage until now.
	recordTenantMetrics(t, usage)
	if err := r.writeStatus(ctx, t, own, conflicting, usage, overCommitted, errors.Join(applyErr, usageErr)); err != nil {
		return reconcile.Result{}, err
	}
	// Without usage (an error), admitted is nil and nothing is marked.
	markErr := r.markBorrowing(ctx, t, admitted, memory)
	if err := errors.Join(applyErr, usageErr, markErr); err != nil {
		return reconcile.Result{}, err
	}
	// Come back for the next showback summary even when nothing changes.
	return reconcile.Result{RequeueAfter: r.showbackInterval()}, nil
}

// reconcileUntenanted keeps the bindings over the namespaces no tenant
// selects: the outsiders binding always, the untenanted binding with
// Untenanted deny (otherwise it is absent).
func (r *TenantReconciler) reconcileUntenanted(ctx context.Context) error {
	tenanted, err := tenantedNamespaces(ctx, r.client)
	if err != nil {
		return err
	}
	if err := r.apply(ctx, tenancy.OutsidersBinding(tenanted), nil); err != nil {
		return err
	}
	if r.untenanted != UntenantedDeny {
		return prune(ctx, r.client, &admissionv1.ValidatingAdmissionPolicyBindingList{}, client.MatchingLabels{tenancyv1.LabelManagedBy: tenancyv1.ManagedByValue},
			func(o client.Object) bool { return o.GetName() != tenancyv1.PolicyUntenanted })
	}
	return r.apply(ctx, tenancy.UntenantedBinding(tenanted), nil)
}

func (r *TenantReconciler) applyBinding(ctx context.Context, t *tenancyv1.GPUTenant) error {
	return r.apply(ctx, tenancy.Binding(t), t)
}

func (r *TenantReconciler) applyQuotas(ctx context.Context, t *tenancyv1.GPUTenant, namespaces []string) error {
	want := map[types.NamespacedName]bool{}
	var errs []error
	for _, ns := range namespaces {
		if q := tenancy.Quota(t, ns); q != nil {
			want[client.ObjectKeyFromObject(q)] = true
			errs = append(errs, r.apply(ctx, q, t))
		}
	}
	errs = append(errs, prune(ctx, r.client, &corev1.ResourceQuotaList{}, client.MatchingLabels{tenancyv1.LabelOwnerTenant: t.Name}, keepKeys(want)))
	return errors.Join(errs...)
}

func (r *TenantReconciler) applyClasses(ctx context.Context, t *tenancyv1.GPUTenant) error {
	want := map[types.NamespacedName]bool{}
	var errs []error
	for _, c := range tenancy.DedicatedClasses(t) {
		want[client.ObjectKeyFromObject(c)] = true
		errs = append(errs, r.apply(ctx, c, t))
	}
	errs = append(errs, prune(ctx, r.client, &resourceapi.DeviceClassList{}, client.MatchingLabels{tenancyv1.LabelOwnerTenant: t.Name}, keepKeys(want)))
	return errors.Join(errs...)
}

// apply server-side applies desired, owned by owner (when not nil) so that
// it is deleted with the tenant (applyOwned).
func (r *TenantReconciler) apply(ctx context.Context, desired client.Object, owner *tenancyv1.GPUTenant) error {
	return applyOwned(ctx, r.client, desired, owner)
}

// usage is what t's admitted claims cost, with those claims and the device
// memory they were costed with.
func (r *TenantReconciler) usage(ctx context.Context, t *tenancyv1.GPUTenant, tenants []*tenancyv1.GPUTenant) (tenancy.Usage, []*resourceapi.ResourceClaim, map[tenancy.DeviceID]int64, error) {
	admitted, err := admittedClaims(ctx, r.client, t, tenants)
	if err != nil {
		return tenancy.Usage{}, nil, nil, err
	}
	memory, err := r.catalog.costing(ctx, r.client, admitted)
	if err != nil {
		return tenancy.Usage{}, nil, nil, err
	}
	seen := map[types.NamespacedName]bool{}
	for _, c := range admitted {
		seen[client.ObjectKeyFromObject(c)] = true
	}
	held, err := tenancy.HeldBy(admitted, memory)
	if err != nil {
		return tenancy.Usage{}, nil, nil, fmt.Errorf("usage of GPUTenant %s: %w", t.Name, err)
	}
	return tenancy.Cost(t, append(held, r.ledger.unseen(t.Name, seen, types.NamespacedName{})...)), admitted, memory, nil
}

func (r *TenantReconciler) writeStatus(ctx context.Context, t *tenancyv1.GPUTenant, own, conflicting []string, usage tenancy.Usage, overCommitted string, problem error) error {
	updated := t.DeepCopy()
	st := &updated.Status
	st.ObservedGeneration = t.Generation
	st.Namespaces = slices.Sorted(slices.Values(append(slices.Clone(own), conflicting...)))
	st.ConflictingNamespaces = conflicting
	st.Usage = usage.Status()
	st.Borrowed = tenancy.Borrowed(t, usage).Status()
	if sb := tenantShowback.summary(t.Name, r.showbackInterval()); sb != nil {
		st.Showback = sb
	}

	ready := metav1.Condition{Type: tenancyv1.TenantReady, Status: metav1.ConditionTrue, Reason: "Enforced", Message: "binding, quotas and classes are in place", ObservedGeneration: t.Generation}
	if problem != nil {
		ready.Status, ready.Reason, ready.Message = metav1.ConditionFalse, "ApplyFailed", problem.Error()
	}
	meta.SetStatusCondition(&st.Conditions, ready)

	conflict := metav1.Condition{Type: tenancyv1.TenantConflict, Status: metav1.ConditionFalse, Reason: "NoConflict", ObservedGeneration: t.Generation}
	if len(conflicting) > 0 {
		conflict.Status, conflict.Reason = metav1.ConditionTrue, tenancyv1.ReasonConflict
		conflict.Message = fmt.Sprintf("namespaces selected by another GPUTenant too, refused GPU claims: %v", conflicting)
	}
	meta.SetStatusCondition(&st.Conditions, conflict)

	exhausted := metav1.Condition{Type: tenancyv1.TenantBudgetExhausted, Status: metav1.ConditionFalse, Reason: "WithinBudget", ObservedGeneration: t.Generation}
	if d, ok := r.ledger.latestDecision(t.Name); ok && !d.Admit && d.Reason == tenancyv1.ReasonOverBudget {
		exhausted.Status, exhausted.Reason, exhausted.Message = metav1.ConditionTrue, tenancyv1.ReasonOverBudget, d.Message
	}
	meta.SetStatusCondition(&st.Conditions, exhausted)

	wasOverCommitted := meta.IsStatusConditionTrue(t.Status.Conditions, tenancyv1.TenantGuaranteeOverCommitted)
	if t.Spec.Guarantee == nil {
		meta.RemoveStatusCondition(&st.Conditions, tenancyv1.TenantGuaranteeOverCommitted)
	} else {
		over := metav1.Condition{Type: tenancyv1.TenantGuaranteeOverCommitted, Status: metav1.ConditionFalse, Reason: "WithinFleet", Message: "the guarantees of all GPUTenants fit in the published fleet", ObservedGeneration: t.Generation}
		if overCommitted != "" {
			over.Status, over.Reason, over.Message = metav1.ConditionTrue, tenancyv1.ReasonGuaranteeOverCommitted, overCommitted
		}
		meta.SetStatusCondition(&st.Conditions, over)
	}

	if equality.Semantic.DeepEqual(t.Status, updated.Status) {
		return nil
	}
	if t.Spec.Guarantee != nil && overCommitted != "" && !wasOverCommitted {
		r.recorder.Eventf(t, nil, corev1.EventTypeWarning, tenancyv1.ReasonGuaranteeOverCommitted, "Reconcile", "%s", overCommitted)
	}
	if len(conflicting) > 0 && !slices.Equal(t.Status.ConflictingNamespaces, conflicting) {
		r.recorder.Eventf(t, nil, corev1.EventTypeWarning, tenancyv1.ReasonConflict, "Reconcile", "%s", conflict.Message)
	}
	if err := r.client.Status().Update(ctx, updated, client.FieldOwner(fieldManager)); err != nil {
		return fmt.Errorf("update status of GPUTenant %s: %w", t.Name, err)
	}
	return nil
}

func (r *TenantReconciler) showbackInterval() time.Duration {
	if r.showbackEvery > 0 {
		return r.showbackEvery
	}
	return DefaultShowbackStatusInterval
}

func recordTenantMetrics(t *tenancyv1.GPUTenant, u tenancy.Usage) {
	forgetTenantMetrics(t.Name)
	tenantShowback.resume(t)
	tenantShowback.observe(t.Name, u)
	tenantMemoryUsed.WithLabelValues(t.Name).Set(float64(u.Memory))
	for class, n := range u.Devices {
		tenantDevicesUsed.WithLabelValues(t.Name, class).Set(float64(n))
	}
	if b := t.Spec.Budget; b != nil {
		if b.GPUMemory != nil {
			tenantMemoryBudget.WithLabelValues(t.Name).Set(float64(b.GPUMemory.Value()))
		}
		for class, n := range b.Devices {
			tenantDevicesBudget.WithLabelValues(t.Name, class).Set(float64(n))
		}
	}
	b := tenancy.Borrowed(t, u)
	tenantMemoryBorrowed.WithLabelValues(t.Name).Set(float64(b.Memory))
	for class, n := range b.Devices {
		tenantDevicesBorrowed.WithLabelValues(t.Name, class).Set(float64(n))
	}
	if g := t.Spec.Guarantee; g != nil && g.GPUMemory != nil {
		tenantMemoryGuarantee.WithLabelValues(t.Name).Set(float64(g.GPUMemory.Value()))
	}
}

// SetupWithManager registers the reconciler: tenants, the objects they own,
// namespaces (which change every tenant's namespaces and the untenanted
// binding), claims (whose deallocation changes usage) and the admission
// reconciler's decisions.
func (r *TenantReconciler) SetupWithManager(mgr ctrl.Manager) error {
	allTenants := handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, _ client.Object) []reconcile.Request {
		tenants, err := listTenants(ctx, r.client)
		if err != nil {
			klog.FromContext(ctx).Error(err, "Map namespace to tenants")
			return []reconcile.Request{clusterKey}
		}
		reqs := []reconcile.Request{clusterKey}
		for _, t := range tenants {
			reqs = append(reqs, reconcile.Request{NamespacedName: types.NamespacedName{Name: t.Name}})
		}
		return reqs
	})
	claimTenant := handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, o client.Object) []reconcile.Request {
		ns := &corev1.Namespace{}
		if err := r.client.Get(ctx, types.NamespacedName{Name: o.GetNamespace()}, ns); err != nil {
			return nil
		}
		tenants, err := listTenants(ctx, r.client)
		if err != nil {
			return nil
		}
		owners, _ := tenancy.Owners(tenants, []*corev1.Namespace{ns})
		var reqs []reconcile.Request
		for _, name := range owners[ns.Name] {
			reqs = append(reqs, reconcile.Request{NamespacedName: types.NamespacedName{Name: name}})
		}
		return reqs
	})
	return ctrl.NewControllerManagedBy(mgr).
		Named("tenants").
		For(&tenancyv1.GPUTenant{}).
		Owns(&admissionv1.ValidatingAdmissionPolicyBinding{}).
		Owns(&corev1.ResourceQuota{}).
		Owns(&resourceapi.DeviceClass{}).
		Watches(&corev1.Namespace{}, allTenants).
		// A tenant's conflicts depend on every other tenant's selector: a
		// change of one tenant's spec re-evaluates them all (the status
		// writes that follow change no generation).
		Watches(&tenancyv1.GPUTenant{}, allTenants, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&resourceapi.ResourceClaim{}, claimTenant).
		WatchesRawSource(source.Channel(r.decided, &handler.EnqueueRequestForObject{})).
		Complete(r)
}
