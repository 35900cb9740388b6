package controller

import (
	"context"
	"fmt"
	"slices"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

// fieldManager names the controller's writes.
const fieldManager = "tessera-dra-controller"

// AdmissionReconciler decides every allocated claim whose devices carry the
// admitted binding condition: it sets the admitted condition in the claim's
// status.devices when the allocation fits the tenant's budget, and the
// rejected condition (the scheduler deallocates and retries) when it does
// not. Decisions are made one at a time, with usage from the admitted
// allocations the cache shows plus those this process admitted since, so
// that racing claims never overshoot a budget.
type AdmissionReconciler struct {
	client   client.Client
	recorder recorder.EventRecorder
	ledger   *ledger
	// catalog knows the memory of devices whose slices are gone for a while.
	catalog *deviceCatalog
	// decided tells the tenant reconciler that a tenant's usage changed.
	decided chan<- event.GenericEvent
	// sharing, when set, refuses shares of a GPU another tenant holds.
	sharing *sharingGuard
	// order is the queue's: fair between tenants unless QueueFIFO.
	order QueueOrder
	// catchUp, when set, counts a previous leader's admissions before the
	// first decision (see leaderCatchUp).
	catchUp *leaderCatchUp
	// holder is this replica's leader-election identity, recorded with each
	// decision (tenancyv1.DecisionRecord) so that the API server refuses a
	// decision of a replica that no longer leads; empty without leader
	// election.
	holder string
}

var _ reconcile.Reconciler = &AdmissionReconciler{}

// +kubebuilder:rbac:groups=resource.k8s.io,resources=resourceclaims;resourceslices,verbs=get;list;watch
// +kubebuilder:rbac:groups=resource.k8s.io,resources=resourceclaims/status,verbs=update;patch
// +kubebuilder:rbac:groups=resource.k8s.io,resources=resourceclaims/driver,resourceNames=gpu.tessera.dev,verbs=arbitrary-node:update;arbitrary-node:patch

// Reconcile decides one claim.
func (r *AdmissionReconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	logger := klog.FromContext(ctx)
	claim := &resourceapi.ResourceClaim{}
	if err := r.client.Get(ctx, req.NamespacedName, claim); err != nil {
		if apierrors.IsNotFound(err) {
			r.ledger.forget(req.NamespacedName)
			return reconcile.Result{}, nil
		}
		return reconcile.Result{}, fmt.Errorf("get claim %s: %w", req.NamespacedName, err)
	}
	switch tenancy.ClaimState(claim) {
	case tenancy.Pending:
	case tenancy.Ungated:
		return reconcile.Result{}, nil
	default:
		// Admitted claims are in the cache now; deallocated and rejected
		// ones hold nothing.
		r.ledger.forget(req.NamespacedName)
		return reconcile.Result{}, nil
	}

	if err := r.catchUp.ensure(ctx, r.client, r.ledger, r.catalog); err != nil {
		return reconcile.Result{}, err
	}
	tenant, d, memory, err := r.decide(ctx, claim)
	if err != nil {
		return reconcile.Result{}, err
	}
	// A node's devices serve only the pool its admin label says.
	if d, err = checkPools(ctx, r.client, claim, d); err != nil {
		return reconcile.Result{}, err
	}
	// No time-shared GPU serves two tenants (sharing.go).
	if r.sharing != nil {
		if d, err = r.sharing.check(ctx, r.client, r.ledger, claim, tenant, d); err != nil {
			return reconcile.Result{}, err
		}
	}
	if err := r.writeConditions(ctx, claim, d, memory); err != nil {
		return reconcile.Result{}, err
	}
	var shares *tenancy.ShareHolder
	if r.sharing != nil && d.Admit {
		shares = r.sharing.shares(claim, tenant)
	}
	tenantName := ""
	if tenant != nil {
		tenantName = tenant.Name
	}
	r.ledger.record(req.NamespacedName, claim.UID, tenantName, d, shares)
	decision := "rejected"
	if d.Admit {
		decision = "admitted"
	}
	allocationDecisions.WithLabelValues(tenantName, decision, d.Reason).Inc()
	logger.Info("Decided allocation", "claim", klog.KObj(claim), "tenant", tenantName, "decision", decision, "reason", d.Reason, "message", d.Message)
	r.emitEvents(claim, d)
	if tenant != nil {
		r.decided <- event.GenericEvent{Object: tenant}
	}
	return reconcile.Result{}, nil
}

// decide finds the claim's tenant and what it holds, and decides. It also
// returns the memory of the claim's devices, to record with the decision.
func (r *AdmissionReconciler) decide(ctx context.Context, claim *resourceapi.ResourceClaim) (*tenancyv1.GPUTenant, tenancy.Decision, map[tenancy.DeviceID]int64, error) {
	ns := &corev1.Namespace{}
	if err := r.client.Get(ctx, types.NamespacedName{Name: claim.Namespace}, ns); err != nil {
		return nil, tenancy.Decision{}, nil, fmt.Errorf("get namespace of claim %s: %w", klog.KObj(claim), err)
	}
	tenants, err := listTenants(ctx, r.client)
	if err != nil {
		return nil, tenancy.Decision{}, nil, err
	}
	// A tenant whose selector does not parse selects nothing; the tenant
	// reconciler reports it.
	owners, _ := tenancy.Owners(tenants, []*corev1.Namespace{ns})
	var t *tenancyv1.GPUTenant
	var d tenancy.Decision
	switch o := owners[ns.Name]; len(o) {
	case 0:
		d = tenancy.Decide(nil, nil, claim, nil)
	case 1:
		t = findTenant(tenants, o[0])
	default:
		t = findTenant(tenants, o[0])
		d = tenancy.Decision{Reason: tenancyv1.ReasonConflict, Message: fmt.Sprintf(
			"namespace %s is selected by more than one GPUTenant (%v); its claims are refused until an admin resolves it", ns.Name, o)}
	}
	if len(owners[ns.Name]) != 1 {
		// Decided without a budget; the memory is still recorded, for the
		// tenant the namespace may join.
		memory, err := r.catalog.costing(ctx, r.client, []*resourceapi.ResourceClaim{claim})
		return t, d, memory, err
	}

	admitted, err := admittedClaims(ctx, r.client, t, tenants)
	if err != nil {
		return nil, tenancy.Decision{}, nil, err
	}
	memory, err := r.catalog.costing(ctx, r.client, append(slices.Clone(admitted), claim))
	if err != nil {
		return nil, tenancy.Decision{}, nil, err
	}
	held, err := r.held(t, admitted, memory, client.ObjectKeyFromObject(claim))
	if err != nil {
		return nil, tenancy.Decision{}, nil, err
	}
	return t, tenancy.Decide(t, held, claim, memory), memory, nil
}

// held is what the tenant's admitted allocations hold, except skip's: the
// admitted claims the cache shows and those the ledger admitted since.
func (r *AdmissionReconciler) held(t *tenancyv1.GPUTenant, admitted []*resourceapi.ResourceClaim, memory map[tenancy.DeviceID]int64, skip types.NamespacedName) ([]tenancy.Holding, error) {
	seen := map[types.NamespacedName]bool{}
	var counted []*resourceapi.ResourceClaim
	for _, c := range admitted {
		key := client.ObjectKeyFromObject(c)
		seen[key] = true
		if key != skip {
			counted = append(counted, c)
		}
	}
	held, err := tenancy.HeldBy(counted, memory)
	if err != nil {
		// An admitted claim whose device vanished from the slices still
		// holds it; counting it short could overshoot, so refuse to decide.
		return nil, fmt.Errorf("usage of GPUTenant %s: %w", t.Name, err)
	}
	return append(held, r.ledger.unseen(t.Name, seen, skip)...), nil
}

// writeConditions sets the decision's condition on every gated device of the
// claim, in status.devices, with the decision's record (the device's memory,
// where known, and this replica's leader-election identity) as the entry's
// data, in one write. The update carries the claim's resourceVersion: a
// claim the scheduler changed meanwhile is decided again.
func (r *AdmissionReconciler) writeConditions(ctx context.Context, claim *resourceapi.ResourceClaim, d tenancy.Decision, memory map[tenancy.DeviceID]int64) error {
	claim = claim.DeepCopy()
	condType := tenancyv1.ConditionAdmitted
	if !d.Admit {
		condType = tenancyv1.ConditionRejected
	}
	for _, res := range claim.Status.Allocation.Devices.Results {
		if !slices.Contains(res.BindingConditions, tenancyv1.ConditionAdmitted) || res.Driver != gpuapi.DriverName {
			continue
		}
		st := tenancy.DeviceStatus(claim, res)
		if st == nil {
			entry := resourceapi.AllocatedDeviceStatus{Driver: res.Driver, Pool: res.Pool, Device: res.Device}
			if res.ShareID != nil {
				id := string(*res.ShareID)
				entry.ShareID = &id
			}
			claim.Status.Devices = append(claim.Status.Devices, entry)
			st = &claim.Status.Devices[len(claim.Status.Devices)-1]
		}
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{
			Type: condType, Status: metav1.ConditionTrue, Reason: d.Reason, Message: d.Message,
			ObservedGeneration: claim.Generation,
		})
		data, err := tenancy.EncodeRecord(tenancyv1.DecisionRecord{
			DeviceMemory: memory[tenancy.DeviceID{Driver: res.Driver, Pool: res.Pool, Device: res.Device}],
			Holder:       r.holder,
		})
		if err != nil {
			return err
		}
		st.Data = data
	}
	if err := r.client.Status().Update(ctx, claim, client.FieldOwner(fieldManager)); err != nil {
		return fmt.Errorf("set %s on claim %s: %w", condType, klog.KObj(claim), err)
	}
	return nil
}

// emitEvents tells the claim and the pods it is reserved for.
func (r *AdmissionReconciler) emitEvents(claim *resourceapi.ResourceClaim, d tenancy.Decision) {
	kind, action := corev1.EventTypeNormal, "Admit"
	if !d.Admit {
		kind, action = corev1.EventTypeWarning, "Reject"
	}
	r.recorder.Eventf(claim, nil, kind, d.Reason, action, "%s", d.Message)
	for _, ref := range claim.Status.ReservedFor {
		if ref.Resource != "pods" || ref.APIGroup != "" {
			continue
		}
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: claim.Namespace, Name: ref.Name, UID: ref.UID}}
		r.recorder.Eventf(pod, claim, kind, d.Reason, action, "claim %s: %s", claim.Name, d.Message)
	}
}

// SetupWithManager registers the reconciler. It sees the claim changes
// needsDecision passes and runs one decision at a time, serial decisions
// being what keeps budgets exact, taking the claims of each tenant in turn
// (fairQueue).
func (r *AdmissionReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if err := addIndexes(context.Background(), mgr.GetFieldIndexer()); err != nil {
		return err
	}
	return ctrl.NewControllerManagedBy(mgr).
		Named("claim-admission").
		For(&resourceapi.ResourceClaim{}, builder.WithPredicates(needsDecision(r.ledger))).
		WithOptions(controller.Options{
			MaxConcurrentReconciles: 1,
			NewQueue: func(name string, rl workqueue.TypedRateLimiter[reconcile.Request]) workqueue.TypedRateLimitingInterface[reconcile.Request] {
				return newAdmissionQueue(r.order, mgr.GetClient(), name, rl)
			},
		}).
		Complete(r)
}
