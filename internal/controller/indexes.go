package controller

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"sigs.k8s.io/controller-runtime/pkg/client"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

// The cache's indexes that keep a decision's reads independent of the
// cluster's size (before them, every decision listed every slice and, for
// shares, every claim). A decision reads:
//
//   - its claim and its namespace (Get);
//   - the tenants (all of them: a namespace's owner depends on every
//     tenant's selector; tenants are configuration, not load);
//   - the namespaces its tenant's selector can match (indexNamespaceLabel),
//     and in each the admitted claims (indexClaimAdmitted);
//   - the slices of the pools its claim's and the tenant's admitted claims
//     allocate from (indexSlicePool);
//   - for shares, the claims allocated the same shared GPUs (indexClaimDevice).
//
// So it costs O(tenants + the tenant's namespaces + the tenant's admitted
// claims + the slices of the pools they use + the claims sharing its GPUs),
// whatever the number of nodes, slices, namespaces and claims elsewhere.
//
// The cache holds every pod that has not terminated (cacheOptions), for
// reclaim, which must see the pods that hold devices; the pod indexes keep
// the readers of pods from copying all of them on every pass: the pods that
// wait for a node (indexPodUnbound) and a claim's reserved pods by UID
// (indexPodUID).
const (
	// indexSlicePool keys Tessera's slices by pool ("pool").
	indexSlicePool = "tessera.pool"
	// indexClaimDevice keys claims by every Tessera device they are
	// allocated ("pool/device").
	indexClaimDevice = "tessera.allocatedDevice"
	// indexClaimAdmitted keys the claims whose allocation is admitted
	// ("true").
	indexClaimAdmitted = "tessera.admitted"
	// indexNamespaceLabel keys namespaces by each label, as "key=value" and
	// as "key" (for selectors that ask only that a key exists).
	indexNamespaceLabel = "tessera.label"
	// indexPodUnbound keys the pending pods that no node has yet ("true").
	indexPodUnbound = "tessera.unbound"
	// indexPodUID keys pods by UID, as a claim's status.reservedFor names
	// them.
	indexPodUID = "tessera.uid"
)

func slicePoolKeys(o client.Object) []string {
	s, ok := o.(*resourceapi.ResourceSlice)
	if !ok || s.Spec.Driver != gpuapi.DriverName {
		return nil
	}
	return []string{s.Spec.Pool.Name}
}

func deviceKey(d tenancy.DeviceID) string { return d.Pool + "/" + d.Device }

func claimDeviceKeys(o client.Object) []string {
	c, ok := o.(*resourceapi.ResourceClaim)
	if !ok {
		return nil
	}
	var out []string
	for d := range tenancy.AllocatedDevices([]*resourceapi.ResourceClaim{c}) {
		out = append(out, deviceKey(d))
	}
	return out
}

func claimAdmittedKeys(o client.Object) []string {
	if c, ok := o.(*resourceapi.ResourceClaim); ok && tenancy.ClaimState(c) == tenancy.Admitted {
		return []string{"true"}
	}
	return nil
}

func namespaceLabelKeys(o client.Object) []string {
	var out []string
	for k, v := range o.GetLabels() {
		out = append(out, k, k+"="+v)
	}
	return out
}

func podUnboundKeys(o client.Object) []string {
	if p, ok := o.(*corev1.Pod); ok && p.Spec.NodeName == "" && p.Status.Phase == corev1.PodPending {
		return []string{"true"}
	}
	return nil
}

func podUIDKeys(o client.Object) []string { return []string{string(o.GetUID())} }

// fieldIndexer is the part of a manager's or a fake client's index registry
// that the controller needs.
type fieldIndexer interface {
	IndexField(ctx context.Context, obj client.Object, field string, extract client.IndexerFunc) error
}

// cacheIndexes are the cache's indexes.
var cacheIndexes = []struct {
	obj     client.Object
	field   string
	extract client.IndexerFunc
}{
	{&resourceapi.ResourceSlice{}, indexSlicePool, slicePoolKeys},
	{&resourceapi.ResourceClaim{}, indexClaimDevice, claimDeviceKeys},
	{&resourceapi.ResourceClaim{}, indexClaimAdmitted, claimAdmittedKeys},
	{&corev1.Namespace{}, indexNamespaceLabel, namespaceLabelKeys},
	{&corev1.Pod{}, indexPodUnbound, podUnboundKeys},
	{&corev1.Pod{}, indexPodUID, podUIDKeys},
}

// addIndexes registers the indexes in the cache.
func addIndexes(ctx context.Context, idx fieldIndexer) error {
	for _, i := range cacheIndexes {
		if err := idx.IndexField(ctx, i.obj, i.field, i.extract); err != nil {
			return fmt.Errorf("index %s: %w", i.field, err)
		}
	}
	return nil
}

// candidateNamespaces are the namespaces that t's selector may select: those
// carrying a label that one of its requirements demands (an Equals, In or
// Exists requirement, whichever names the fewest values), or every namespace
// when the selector demands no label (it matches namespaces by what they
// lack, or everything). The caller still matches each with the selector.
func candidateNamespaces(ctx context.Context, c client.Reader, t *tenancyv1.GPUTenant) ([]*corev1.Namespace, error) {
	sel, err := tenancy.Selector(t)
	if err != nil {
		// Selects nothing; the tenant reconciler reports it.
		return nil, nil //nolint:nilerr // a bad selector is the tenant's problem, not the decision's
	}
	reqs, _ := sel.Requirements()
	var keys []string
	for _, r := range reqs {
		var k []string
		switch r.Operator() {
		case selection.Equals, selection.DoubleEquals, selection.In:
			for v := range r.Values() {
				k = append(k, r.Key()+"="+v)
			}
		case selection.Exists:
			k = []string{r.Key()}
		default:
			continue
		}
		if keys == nil || len(k) < len(keys) {
			keys = k
		}
	}
	if keys == nil {
		return listNamespaces(ctx, c)
	}
	seen := sets.New[string]()
	var out []*corev1.Namespace
	for _, k := range keys {
		var list corev1.NamespaceList
		if err := c.List(ctx, &list, client.MatchingFields{indexNamespaceLabel: k}); err != nil {
			return nil, fmt.Errorf("list namespaces labelled %s: %w", k, err)
		}
		for i := range list.Items {
			if ns := &list.Items[i]; !seen.Has(ns.Name) && sel.Matches(labels.Set(ns.Labels)) {
				seen.Insert(ns.Name)
				out = append(out, ns)
			}
		}
	}
	return out, nil
}

// unboundPods are the pending pods that no node has yet.
func unboundPods(ctx context.Context, c client.Reader) ([]corev1.Pod, error) {
	var list corev1.PodList
	if err := c.List(ctx, &list, client.MatchingFields{indexPodUnbound: "true"}); err != nil {
		return nil, fmt.Errorf("list unbound pods: %w", err)
	}
	return list.Items, nil
}

// reservedPods are, by UID, the pods the claims are reserved for that the
// cache holds (those that have not terminated).
func reservedPods(ctx context.Context, c client.Reader, claims map[types.NamespacedName]*resourceapi.ResourceClaim) (map[types.UID]*corev1.Pod, error) {
	out := map[types.UID]*corev1.Pod{}
	for _, claim := range claims {
		if claim.Status.Allocation == nil {
			continue
		}
		for _, ref := range claim.Status.ReservedFor {
			if ref.Resource != "pods" || ref.APIGroup != "" || out[ref.UID] != nil {
				continue
			}
			var list corev1.PodList
			if err := c.List(ctx, &list, client.InNamespace(claim.Namespace), client.MatchingFields{indexPodUID: string(ref.UID)}); err != nil {
				return nil, fmt.Errorf("look up pod %s/%s: %w", claim.Namespace, ref.Name, err)
			}
			for i := range list.Items {
				out[ref.UID] = &list.Items[i]
			}
		}
	}
	return out, nil
}
