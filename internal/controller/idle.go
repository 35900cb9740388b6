package controller

import (
	"context"
	"errors"
	"fmt"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	"github.com/prometheus/client_golang/prometheus"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

var idleClaims = prometheus.NewGaugeVec(prometheus.GaugeOpts{
	Namespace: "tessera", Name: "idle_claims",
	Help: "Claims marked idle (tenancy.tessera.dev/idle): their devices stayed below the plugin's utilization threshold for the controller's --idle-after, by tenant (empty: none) and namespace.",
}, []string{"tenant", "namespace"})

func init() { ctrlmetrics.Registry.MustRegister(idleClaims) }

// DefaultIdleSyncInterval is how often, by default, the idle marks follow
// the plugins' reports: these change at most once per plugin sample, and a
// minute is fine-grained next to idle times of hours.
const DefaultIdleSyncInterval = time.Minute

// IdleMarker marks idle claims. It, not the kubelet plugin, writes the
// mark: status.devices is written through the resourceclaims/driver
// subresource, and a node allowed to write it (even associated-node only)
// could set tenancy.tessera.dev/admitted on its own claims' devices and
// admit them past their tenant's budget. So each plugin only reports, in
// its node's Lease, since when its claims have been idle, and the marker
// believes a report only about claims whose devices are in that node's
// pool (tenancy.IdleSince): a node cannot get another node's claims marked.
type IdleMarker struct {
	// client reads claims, namespaces, tenants and the idle reports from
	// the cache (which holds the Leases of namespace only: cacheOptions),
	// and writes claim status.
	client    client.Client
	namespace string
	recorder  recorder.EventRecorder
	now       func() time.Time
	// after is how long a claim must have been idle to be marked.
	after time.Duration
	// showback, when set, learns the devices of idle-reported claims by
	// tenant (its active device-hours leave them out).
	showback *showback

	// reclaimed is, by claim UID, the start of the idle spell for which
	// its pods were evicted: one eviction per spell. Only the sync loop
	// touches it.
	reclaimed map[types.UID]time.Time
}

// sync marks the claims idle for at least m.after, clears the mark of those
// no longer idle, and counts the marked claims.
func (m *IdleMarker) sync(ctx context.Context) error {
	logger := klog.FromContext(ctx)
	reports, err := m.reports(ctx)
	if err != nil {
		return err
	}
	var claims resourceapi.ResourceClaimList
	if err := m.client.List(ctx, &claims); err != nil {
		return fmt.Errorf("list claims: %w", err)
	}
	tenants, owners, err := m.owners(ctx)
	if err != nil {
		return err
	}
	if m.reclaimed == nil {
		m.reclaimed = map[types.UID]time.Time{}
	}
	live := map[types.UID]bool{}
	now := m.now()
	counts := map[[2]string]float64{}
	// idleDevices is, by tenant and DeviceClass, the devices of claims
	// reported idle, however briefly: they are not active.
	idleDevices := map[string]map[string]int64{}
	var errs []error
	for i := range claims.Items {
		claim := &claims.Items[i]
		live[claim.UID] = true
		since, ok := tenancy.IdleSince(reports, claim)
		idle := ok && !now.Before(since.Add(m.after))
		tenant := ""
		if o := owners[claim.Namespace]; len(o) == 1 {
			tenant = o[0]
		}
		if idle {
			counts[[2]string{tenant, claim.Namespace}]++
		}
		if ok && tenant != "" {
			countDevices(idleDevices, tenant, claim)
		}
		changed, err := m.mark(ctx, claim, idle, since)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if changed && idle {
			logger.Info("Claim idle", "claim", klog.KObj(claim), "since", since)
			m.emitIdle(claim, since)
		}
		if idle {
			if err := m.reclaim(ctx, findTenant(tenants, tenant), claim, since, now); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for uid := range m.reclaimed {
		if !live[uid] {
			delete(m.reclaimed, uid)
		}
	}
	if m.showback != nil {
		m.showback.observeIdle(idleDevices)
	}
	idleClaims.Reset()
	for k, n := range counts {
		idleClaims.WithLabelValues(k[0], k[1]).Set(n)
	}
	if len(errs) > 0 {
		return fmt.Errorf("mark idle claims: %w", errors.Join(errs...))
	}
	return nil
}

// countDevices adds the claim's devices, by DeviceClass, to the tenant's,
// as Cost counts them.
func countDevices(into map[string]map[string]int64, tenant string, claim *resourceapi.ResourceClaim) {
	if claim.Status.Allocation == nil {
		return
	}
	for _, r := range claim.Status.Allocation.Devices.Results {
		class := tenancy.RequestClass(&claim.Spec, r.Request)
		if class == "" {
			continue
		}
		if into[tenant] == nil {
			into[tenant] = map[string]int64{}
		}
		into[tenant][class]++
	}
}

// reports reads every node's idle report. A report that cannot be read is
// left out (its node's claims count as busy) and logged.
func (m *IdleMarker) reports(ctx context.Context) (map[string]tenancy.IdleReport, error) {
	var leases coordinationv1.LeaseList
	if err := m.client.List(ctx, &leases, client.InNamespace(m.namespace)); err != nil {
		return nil, fmt.Errorf("list idle reports in %s: %w", m.namespace, err)
	}
	out := map[string]tenancy.IdleReport{}
	for i := range leases.Items {
		node, report, ok, err := tenancy.ParseIdleReport(&leases.Items[i])
		if err != nil {
			klog.FromContext(ctx).Error(err, "Ignoring idle report", "lease", klog.KObj(&leases.Items[i]))
			continue
		}
		if ok {
			out[node] = report
		}
	}
	return out, nil
}

func (m *IdleMarker) owners(ctx context.Context) ([]*tenancyv1.GPUTenant, map[string][]string, error) {
	tenants, err := listTenants(ctx, m.client)
	if err != nil {
		return nil, nil, err
	}
	namespaces, err := listNamespaces(ctx, m.client)
	if err != nil {
		return nil, nil, err
	}
	owners, _ := tenancy.Owners(tenants, namespaces)
	return tenants, owners, nil
}

// reclaim evicts the pods of a claim idle since since, once per idle
// spell, when its tenant opted in (spec.idleReclaim) and the claim has been
// idle longer than the tenant allows. A claim of no tenant, or of a tenant
// that did not opt in, is never evicted.
func (m *IdleMarker) reclaim(ctx context.Context, t *tenancyv1.GPUTenant, claim *resourceapi.ResourceClaim, since, now time.Time) error {
	if t == nil || t.Spec.IdleReclaim == nil {
		return nil
	}
	after := t.Spec.IdleReclaim.After.Duration
	if now.Before(since.Add(after)) {
		return nil
	}
	if done, ok := m.reclaimed[claim.UID]; ok && done.Equal(since) {
		return nil
	}
	msg := fmt.Sprintf("evicted: the claim's devices have been idle since %s, longer than GPUTenant %s allows (spec.idleReclaim.after %s)",
		since.UTC().Format(time.RFC3339), t.Name, after)
	if err := evictClaimPods(ctx, m.client, m.recorder, claim, tenancyv1.ReasonIdleReclaimed, msg); err != nil {
		return err
	}
	m.reclaimed[claim.UID] = since
	return nil
}

// mark sets (idle) or removes ConditionIdle on every gpu.tessera.dev device
// of the claim and writes the claim's status when that changed anything.
// The update carries the claim's resourceVersion: a claim changed meanwhile
// is marked on the next sync.
func (m *IdleMarker) mark(ctx context.Context, claim *resourceapi.ResourceClaim, idle bool, since time.Time) (bool, error) {
	if claim.Status.Allocation == nil {
		return false, nil
	}
	claim = claim.DeepCopy()
	changed := false
	for _, res := range claim.Status.Allocation.Devices.Results {
		if res.Driver != gpuapi.DriverName {
			continue
		}
		st := tenancy.DeviceStatus(claim, res)
		if !idle {
			if st != nil && meta.RemoveStatusCondition(&st.Conditions, tenancyv1.ConditionIdle) {
				changed = true
			}
			continue
		}
		if st == nil {
			entry := resourceapi.AllocatedDeviceStatus{Driver: res.Driver, Pool: res.Pool, Device: res.Device}
			if res.ShareID != nil {
				id := string(*res.ShareID)
				entry.ShareID = &id
			}
			claim.Status.Devices = append(claim.Status.Devices, entry)
			st = &claim.Status.Devices[len(claim.Status.Devices)-1]
		}
		if meta.IsStatusConditionTrue(st.Conditions, tenancyv1.ConditionIdle) {
			continue
		}
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{
			Type: tenancyv1.ConditionIdle, Status: metav1.ConditionTrue, Reason: tenancyv1.ReasonIdle,
			Message:            idleMessage(since),
			LastTransitionTime: metav1.NewTime(m.now()), ObservedGeneration: claim.Generation,
		})
		changed = true
	}
	if !changed {
		return false, nil
	}
	if err := m.client.Status().Update(ctx, claim, client.FieldOwner(fieldManager)); err != nil {
		return false, fmt.Errorf("set %s=%t on claim %s: %w", tenancyv1.ConditionIdle, idle, klog.KObj(claim), err)
	}
	return true, nil
}

func idleMessage(since time.Time) string {
	return fmt.Sprintf("the claim's devices have been below the idle utilization threshold since %s", since.UTC().Format(time.RFC3339))
}

// emitIdle tells the claim and the pods it is reserved for, once, when the
// claim is marked.
func (m *IdleMarker) emitIdle(claim *resourceapi.ResourceClaim, since time.Time) {
	msg := idleMessage(since)
	m.recorder.Eventf(claim, nil, corev1.EventTypeNormal, tenancyv1.ReasonIdle, "MarkIdle", "%s", msg)
	for _, ref := range claim.Status.ReservedFor {
		if ref.Resource != "pods" || ref.APIGroup != "" {
			continue
		}
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: claim.Namespace, Name: ref.Name, UID: ref.UID}}
		m.recorder.Eventf(pod, claim, corev1.EventTypeNormal, tenancyv1.ReasonIdle, "MarkIdle", "claim %s: %s", claim.Name, msg)
	}
}

// run syncs every interval until ctx ends. A failed sync is logged and
// tried again on the next tick: marks follow the reports, which change
// slowly.
func (m *IdleMarker) run(ctx context.Context, interval time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if err := m.sync(ctx); err != nil {
			klog.FromContext(ctx).Error(err, "Marking idle claims")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
