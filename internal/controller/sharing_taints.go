package controller

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

// taintRuleSuffix ends the names of the DeviceTaintRules of sharing
// (tenancy.TaintRuleName).
const taintRuleSuffix = ".sharing.tenancy.tessera.dev"

// SharingReconciler keeps one DeviceTaintRule per time-shared GPU: a GPU
// that a sharing group holds shares of is tainted with the group, so that
// only the group's claims (which tolerate it) are allocated more of it; once
// its last share goes, the taint becomes GroupFree, which every claim
// tolerates in its fallback alternative, so the GPU is open to all again and
// each group's claims still try the GPUs they hold first. It works from the
// claims' allocations and the published slices alone, never from memory, so
// a restart leaves no tenant's taint behind and misses none. It also keeps the binding of the untenanted sharing policy
// on the namespaces no tenant selects.
//
// Everything is one reconcile of the whole cluster: any claim's change can
// change any GPU's holder, and the work is a list and a diff.
type SharingReconciler struct {
	client client.Client
	// now is time.Now; tests replace it.
	now func() time.Time
	// lastWithdrawal is when the free taints were last withdrawn for a
	// waiting claim that cannot tolerate them (freeGPUs). Reconcile runs
	// one at a time (there is one key), so it needs no lock.
	lastWithdrawal time.Time
	// withdrawn says the free taints were withdrawn for a waiting claim and
	// not given back since. The reconciler remembers it rather than reading
	// it off the rules it lists: its cache goes on listing some of the free
	// rules it just deleted until their deletions arrive, one watch event
	// each, and a withdrawal judged from those would look undone and be
	// undone at once (every free rule created again, the waiting claim kept
	// off free GPUs for another interval).
	withdrawn bool
}

// freeWithdrawalInterval bounds how often freeGPUs withdraws the free taints
// of the whole cluster: each withdrawal deletes every free rule and its end
// creates them again, on the controller's shared API budget. Claims that
// cannot tolerate the free taint, created and deleted in a loop, cost at
// most one withdrawal and one restoration per interval; one that waits
// meanwhile waits at most this long for free GPUs.
const freeWithdrawalInterval = time.Minute

var _ reconcile.Reconciler = &SharingReconciler{}

// Tenant-exclusive time-sharing: one DeviceTaintRule per time-shared GPU a
// tenant holds, and the binding of the untenanted sharing policy, kept bound
// to the namespaces of no tenant: the one binding of that kind it patches.
//
// +kubebuilder:rbac:groups=resource.k8s.io,resources=devicetaintrules,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=admissionregistration.k8s.io,resources=mutatingadmissionpolicybindings,verbs=get;list;watch;create
// +kubebuilder:rbac:groups=admissionregistration.k8s.io,resources=mutatingadmissionpolicybindings,resourceNames=untenanted.sharing.tenancy.tessera.dev,verbs=patch

// Reconcile brings every sharing taint and the untenanted binding in line.
func (r *SharingReconciler) Reconcile(ctx context.Context, _ reconcile.Request) (reconcile.Result, error) {
	held, err := shareHolders(ctx, r.client, tenancy.Admitted, tenancy.Ungated)
	if err != nil {
		return reconcile.Result{}, err
	}
	// Pending shares taint a GPU no one holds yet: that narrows the window in
	// which another tenant can race for it.
	pending, err := shareHolders(ctx, r.client, tenancy.Pending)
	if err != nil {
		return reconcile.Result{}, err
	}
	rules, err := sharingRules(ctx, r.client)
	if err != nil {
		return reconcile.Result{}, err
	}
	free, later, err := r.freeGPUs(ctx, rules)
	if err != nil {
		return reconcile.Result{}, err
	}
	// The untenanted binding first: a claim created before it is in place
	// gets no toleration of free GPUs.
	if err := r.applyUntenantedBinding(ctx); err != nil {
		return reconcile.Result{}, err
	}
	return reconcile.Result{RequeueAfter: later}, r.applyTaints(ctx, rules, tenancy.TaintRules(free, tenancy.TaintGroups(held, pending)))
}

// sharingRules are the DeviceTaintRules of sharing that exist: the
// controller's, named with taintRuleSuffix.
func sharingRules(ctx context.Context, c client.Reader) ([]resourceapi.DeviceTaintRule, error) {
	var have resourceapi.DeviceTaintRuleList
	if err := c.List(ctx, &have, client.MatchingLabels{tenancyv1.LabelManagedBy: tenancyv1.ManagedByValue}); err != nil {
		return nil, fmt.Errorf("list DeviceTaintRules: %w", err)
	}
	var out []resourceapi.DeviceTaintRule
	for _, rule := range have.Items {
		if strings.HasSuffix(rule.Name, taintRuleSuffix) {
			out = append(out, rule)
		}
	}
	return out, nil
}

// freeGPUs are the shared GPUs to taint GroupFree where no group holds them:
// every published one and every one a rule taints that its node has only
// withdrawn for now (tenancy.SharedGPUsWithWithdrawn), or none while a
// waiting claim could not tolerate the free taint (tenancy.BlockedByFreeTaint),
// so that such a claim is not kept off free GPUs for good; then groups only
// lose the preference for their own GPUs, and the GPUs held by a group are
// tainted as ever. Once withdrawn, the free taints stay withdrawn until no
// such claim waits. Withdrawing happens at most once per
// freeWithdrawalInterval; until the next may, the free taints stay and later
// says when to look again.
func (r *SharingReconciler) freeGPUs(ctx context.Context, rules []resourceapi.DeviceTaintRule) (free []tenancy.DeviceID, later time.Duration, err error) {
	var claims resourceapi.ResourceClaimList
	if err := r.client.List(ctx, &claims); err != nil {
		return nil, 0, fmt.Errorf("list claims: %w", err)
	}
	if i := slices.IndexFunc(claims.Items, func(c resourceapi.ResourceClaim) bool { return tenancy.BlockedByFreeTaint(&c) }); i >= 0 {
		c := &claims.Items[i]
		logger := klog.FromContext(ctx)
		if r.withdrawn {
			return nil, 0, nil
		}
		now := r.clock()
		since := now.Sub(r.lastWithdrawal)
		if r.lastWithdrawal.IsZero() || since >= freeWithdrawalInterval {
			r.lastWithdrawal, r.withdrawn = now, true
			logger.V(2).Info("Free shared GPUs go untainted while a claim that does not tolerate it waits", "claim", klog.KObj(c))
			return nil, 0, nil
		}
		later = freeWithdrawalInterval - since
		logger.V(2).Info("Free shared GPUs stay tainted for now: their taints were withdrawn a moment ago", "claim", klog.KObj(c), "retryAfter", later)
	} else {
		r.withdrawn = false
	}
	var published resourceapi.ResourceSliceList
	if err := r.client.List(ctx, &published); err != nil {
		return nil, 0, fmt.Errorf("list ResourceSlices: %w", err)
	}
	return tenancy.SharedGPUsWithWithdrawn(published.Items, rules), later, nil
}

func (r *SharingReconciler) clock() time.Time {
	if r.now == nil {
		return time.Now()
	}
	return r.now()
}

// applyTaints makes the sharing rules that exist (have) what want says:
// those missing or changed are applied, those not wanted pruned.
func (r *SharingReconciler) applyTaints(ctx context.Context, have []resourceapi.DeviceTaintRule, want []*resourceapi.DeviceTaintRule) error {
	logger := klog.FromContext(ctx)
	existing := map[string]*resourceapi.DeviceTaintRule{}
	for i := range have {
		existing[have[i].Name] = &have[i]
	}
	wanted := map[string]bool{}
	var errs []error
	for _, rule := range want {
		wanted[rule.Name] = true
		old, ok := existing[rule.Name]
		if ok && sameTaintRule(old, rule) {
			continue
		}
		if err := applyOwned(ctx, r.client, rule, nil); err != nil {
			errs = append(errs, err)
			continue
		}
		logger.Info("Tainted shared GPU", "rule", rule.Name, "group", rule.Spec.Taint.Value, "retainted", ok)
	}
	// Only the rules of sharing (sharingRules) are the reconciler's.
	errs = append(errs, prune(ctx, r.client, &resourceapi.DeviceTaintRuleList{}, client.MatchingLabels{tenancyv1.LabelManagedBy: tenancyv1.ManagedByValue},
		func(o client.Object) bool {
			return !strings.HasSuffix(o.GetName(), taintRuleSuffix) || wanted[o.GetName()]
		}))
	return errors.Join(errs...)
}

// sameTaintRule compares what the controller sets: the selector and the
// taint's key, value and effect. The API server fills in the taint's
// timeAdded; comparing it, or overwriting it, would update the rule on every
// reconcile, and every update would trigger the next.
func sameTaintRule(have, want *resourceapi.DeviceTaintRule) bool {
	return equality.Semantic.DeepEqual(have.Spec.DeviceSelector, want.Spec.DeviceSelector) &&
		have.Spec.Taint.Key == want.Spec.Taint.Key && have.Spec.Taint.Value == want.Spec.Taint.Value &&
		have.Spec.Taint.Effect == want.Spec.Taint.Effect
}

func (r *SharingReconciler) applyUntenantedBinding(ctx context.Context) error {
	tenanted, err := tenantedNamespaces(ctx, r.client)
	if err != nil {
		return err
	}
	return applyOwned(ctx, r.client, tenancy.UntenantedSharingBinding(tenanted), nil)
}

// SetupWithManager registers the reconciler on every change of claims,
// tenants (their sharing policy), namespaces (their tenant), ResourceSlices
// (GPUs come and go) and its own taint rules (an edited or deleted rule is
// put back), all mapped to one key.
func (r *SharingReconciler) SetupWithManager(mgr ctrl.Manager) error {
	one := handler.EnqueueRequestsFromMapFunc(func(context.Context, client.Object) []reconcile.Request {
		return []reconcile.Request{{}}
	})
	return ctrl.NewControllerManagedBy(mgr).
		Named("sharing").
		Watches(&resourceapi.ResourceClaim{}, one).
		Watches(&tenancyv1.GPUTenant{}, one).
		Watches(&corev1.Namespace{}, one).
		Watches(&resourceapi.DeviceTaintRule{}, one).
		Watches(&resourceapi.ResourceSlice{}, one).
		Watches(&admissionv1.MutatingAdmissionPolicyBinding{}, one).
		Complete(r)
}
