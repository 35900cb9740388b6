package controller

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2/ktesting"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	chart "github.com/tessera-gpu/tessera/deployments/helm/tessera"
	tnvml "github.com/tessera-gpu/tessera/internal/nvml"
	"github.com/tessera-gpu/tessera/internal/nvml/nvmlmock"
	"github.com/tessera-gpu/tessera/internal/testing/builder"
	"github.com/tessera-gpu/tessera/pkg/inventory"
	"github.com/tessera-gpu/tessera/pkg/resourceslice"
)

var reclaimT0 = time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC)

// held is a claim of a running pod in the reclaim tests: the pod, named
// pod-<claim>, started minute minutes after reclaimT0 with priority.
type held struct {
	ns, claim, class, device string
	priority                 int32
	minute                   int
}

// h100Node is one node, n1, of two H100s as go-nvml's mock reports them.
func h100Node(t *testing.T) inventory.Node {
	t.Helper()
	s, err := nvmlmock.New("dgxh100", 2, "n1")
	if err != nil {
		t.Fatal(err)
	}
	lib, err := tnvml.OpenMock(s)
	if err != nil {
		t.Fatal(err)
	}
	node, err := lib.Discover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return node
}

// publish is what n1's plugin publishes with prepared devices withdrawing
// what they block (the chart's default).
func publish(node inventory.Node, prepared map[string]bool) []client.Object {
	var out []client.Object
	for _, s := range resourceslice.Objects("n1", resourceslice.Build("n1", node, resourceslice.Options{Pool: "default", Prepared: prepared, WithdrawBlocked: true})) {
		out = append(out, s)
	}
	return out
}

func reclaimTenant(name string, guarantee string) *tenancyv1.GPUTenant {
	t := builder.MakeTenant(name)
	if guarantee != "" {
		t.GuaranteedMemory(guarantee)
	}
	return t.Obj()
}

func (h held) objects() (*resourceapi.ResourceClaim, *corev1.Pod) {
	pod := "pod-" + h.claim
	claim := builder.MakeClaim(h.claim).Namespace(h.ns).Request(builder.MakeRequest("gpu", h.class).Obj()).
		Pool("n1").Device("gpu", h.device).ReservedFor(pod, types.UID(h.ns+"-"+pod)).Obj()
	started := metav1.NewTime(reclaimT0.Add(time.Duration(h.minute) * time.Minute))
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: h.ns, Name: pod, UID: types.UID(h.ns + "-" + pod), CreationTimestamp: started},
		Spec: corev1.PodSpec{NodeName: "n1", Priority: ptr.To(h.priority), ResourceClaims: []corev1.PodResourceClaim{
			{Name: "gpu", ResourceClaimName: ptr.To(h.claim)},
		}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, StartTime: &started},
	}
	return claim, p
}

// zoneAffinity requires a node labelled zone=zone.
func zoneAffinity(zone string) *corev1.Affinity {
	return &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
		RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
			MatchExpressions: []corev1.NodeSelectorRequirement{{Key: "zone", Operator: corev1.NodeSelectorOpIn, Values: []string{zone}}},
		}}},
	}}
}

// waitingFor is a pod of namespace a that kube-scheduler found no room for,
// with its unallocated claim of one request.
func waitingFor(request resourceapi.DeviceRequest) (*resourceapi.ResourceClaim, *corev1.Pod) {
	claim := builder.MakeClaim("want").Namespace("a").Request(request).Obj()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "waiting", UID: "a-waiting", CreationTimestamp: metav1.NewTime(reclaimT0.Add(time.Hour))},
		Spec:       corev1.PodSpec{ResourceClaims: []corev1.PodResourceClaim{{Name: "gpu", ResourceClaimName: ptr.To("want")}}},
		Status: corev1.PodStatus{Phase: corev1.PodPending, Conditions: []corev1.PodCondition{{
			Type: corev1.PodScheduled, Status: corev1.ConditionFalse, Reason: corev1.PodReasonUnschedulable,
			LastTransitionTime: metav1.NewTime(reclaimT0.Add(time.Hour)),
		}}},
	}
	return claim, pod
}

// TestReclaim runs one reclaim pass over node n1 (two H100s) after the
// reclaimer saw the node with nothing prepared, then with the claims below
// allocated and what they block withdrawn. Tenant a waits; b borrows (no
// guarantee); c holds exactly its guarantee.
func TestReclaim(t *testing.T) {
	mig3g := builder.MakeRequest("gpu", gpuapi.ClassMIG).Profile("3g.40gb").Obj()
	whole := builder.MakeRequest("gpu", gpuapi.ClassGPU).Obj()
	// b's two GPUs, the low-priority one the victim wherever the pod may go.
	lowAndHigh := []held{
		{ns: "b", claim: "low", class: gpuapi.ClassGPU, device: "gpu-1", priority: 0, minute: 1},
		{ns: "b", claim: "high", class: gpuapi.ClassGPU, device: "gpu-0", priority: 100, minute: 5},
	}
	tests := map[string]struct {
		guaranteeA, guaranteeC string
		held                   []held
		want                   resourceapi.DeviceRequest
		nodeSelector           map[string]string
		affinity               *corev1.Affinity
		tolerations            []corev1.Toleration
		// taints are n1's; its labels are zone=here.
		taints  []corev1.Taint
		evicted []string
		events  []string
	}{
		// gpu-0's memory slices 0 and 4 hold b's newest and b's older 1g
		// partitions; slice 5 holds c's, which c's guarantee protects. A
		// 3g.40gb takes slices 0-3 or 4-7. Taking b's claims in order
		// (newest first) until the pod fits takes both; the first frees
		// nothing the pod can use, so only the older one is evicted.
		"MIG: greedy would evict two pods, one suffices": {
			guaranteeA: "40Gi", guaranteeC: "90Gi",
			held: []held{
				{ns: "b", claim: "new", class: gpuapi.ClassMIG, device: "gpu-0-mig-1g10gb-4", minute: 5},
				{ns: "b", claim: "old", class: gpuapi.ClassMIG, device: "gpu-0-mig-1g10gb-0", minute: 1},
				{ns: "c", claim: "c-mig", class: gpuapi.ClassMIG, device: "gpu-0-mig-1g10gb-5", minute: 0},
				{ns: "c", claim: "c-whole", class: gpuapi.ClassGPU, device: "gpu-1", minute: 0},
			},
			want:    mig3g,
			evicted: []string{"b/pod-old"},
			events:  []string{"*v1.Pod b/pod-old Reclaimed", "*v1.ResourceClaim b/old Reclaimed", "*v1.Pod a/waiting ReclaimingGuarantee"},
		},
		// The same fleet, but a holds its guarantee already: nothing is
		// evicted, however long its pod waits.
		"no eviction while the owner is at its guarantee": {
			guaranteeA: "10Gi", guaranteeC: "80Gi",
			held: []held{
				{ns: "a", claim: "a-own", class: gpuapi.ClassMIG, device: "gpu-0-mig-1g10gb-6", minute: 0},
				{ns: "b", claim: "new", class: gpuapi.ClassMIG, device: "gpu-0-mig-1g10gb-4", minute: 5},
				{ns: "b", claim: "old", class: gpuapi.ClassMIG, device: "gpu-0-mig-1g10gb-0", minute: 1},
				{ns: "c", claim: "c-whole", class: gpuapi.ClassGPU, device: "gpu-1", minute: 0},
			},
			want:   mig3g,
			events: []string{"*v1.Pod a/waiting GuaranteeHeld"},
		},
		// a is below its guarantee, but the pod would take it above: reclaim
		// gives a guarantee back, it does not lend.
		"no eviction for a pod that would take the owner above its guarantee": {
			guaranteeA: "20Gi", guaranteeC: "80Gi",
			held: []held{
				{ns: "b", claim: "old", class: gpuapi.ClassMIG, device: "gpu-0-mig-1g10gb-0", minute: 1},
				{ns: "b", claim: "new", class: gpuapi.ClassMIG, device: "gpu-0-mig-1g10gb-4", minute: 5},
				{ns: "c", claim: "c-whole", class: gpuapi.ClassGPU, device: "gpu-1", minute: 0},
			},
			want: mig3g,
		},
		// Both of b's GPUs would do; the low-priority one goes although the
		// high-priority one started later.
		"lowest priority first": {
			guaranteeA: "80Gi",
			held: []held{
				{ns: "b", claim: "high", class: gpuapi.ClassGPU, device: "gpu-0", priority: 100, minute: 5},
				{ns: "b", claim: "low", class: gpuapi.ClassGPU, device: "gpu-1", priority: 0, minute: 1},
			},
			want:    whole,
			evicted: []string{"b/pod-low"},
			events:  []string{"*v1.Pod b/pod-low Reclaimed", "*v1.ResourceClaim b/low Reclaimed", "*v1.Pod a/waiting ReclaimingGuarantee"},
		},
		// The pod may not go to n1 (its nodeSelector names labels n1 lacks):
		// nothing there is evicted for it.
		"not for a pod that cannot go to the node": {
			guaranteeA: "80Gi",
			held: []held{
				{ns: "b", claim: "low", class: gpuapi.ClassGPU, device: "gpu-1", priority: 0, minute: 1},
				{ns: "b", claim: "high", class: gpuapi.ClassGPU, device: "gpu-0", priority: 100, minute: 5},
			},
			want:         whole,
			nodeSelector: map[string]string{"zone": "elsewhere"},
		},
		// Nor where its required node affinity excludes n1, as
		// kube-scheduler's NodeAffinity filter would.
		"not for a pod whose required node affinity excludes the node": {
			guaranteeA: "80Gi",
			held:       lowAndHigh,
			want:       whole,
			affinity:   zoneAffinity("elsewhere"),
		},
		"for a pod whose required node affinity takes the node": {
			guaranteeA: "80Gi",
			held:       lowAndHigh,
			want:       whole,
			affinity:   zoneAffinity("here"),
			evicted:    []string{"b/pod-low"},
			events:     []string{"*v1.Pod b/pod-low Reclaimed", "*v1.ResourceClaim b/low Reclaimed", "*v1.Pod a/waiting ReclaimingGuarantee"},
		},
		// Nor on a node whose NoSchedule taint the pod does not tolerate,
		// as kube-scheduler's TaintToleration filter would.
		"not for a pod that does not tolerate the node's taint": {
			guaranteeA: "80Gi",
			held:       lowAndHigh,
			want:       whole,
			taints:     []corev1.Taint{{Key: "dedicated", Value: "x", Effect: corev1.TaintEffectNoSchedule}},
			// A toleration of another value does not do.
			tolerations: []corev1.Toleration{{Key: "dedicated", Operator: corev1.TolerationOpEqual, Value: "y", Effect: corev1.TaintEffectNoSchedule}},
		},
		"for a pod that tolerates the node's taints": {
			guaranteeA: "80Gi",
			held:       lowAndHigh,
			want:       whole,
			taints: []corev1.Taint{
				{Key: "dedicated", Value: "x", Effect: corev1.TaintEffectNoSchedule},
				// Scoring only: it keeps no pod off the node.
				{Key: "soft", Value: "x", Effect: corev1.TaintEffectPreferNoSchedule},
			},
			tolerations: []corev1.Toleration{{Key: "dedicated", Operator: corev1.TolerationOpExists}},
			evicted:     []string{"b/pod-low"},
			events:      []string{"*v1.Pod b/pod-low Reclaimed", "*v1.ResourceClaim b/low Reclaimed", "*v1.Pod a/waiting ReclaimingGuarantee"},
		},
		// Among equal priorities, the most recently started goes.
		"most recently started first": {
			guaranteeA: "80Gi",
			held: []held{
				{ns: "b", claim: "older", class: gpuapi.ClassGPU, device: "gpu-0", minute: 1},
				{ns: "b", claim: "newer", class: gpuapi.ClassGPU, device: "gpu-1", minute: 5},
			},
			want:    whole,
			evicted: []string{"b/pod-newer"},
			events:  []string{"*v1.Pod b/pod-newer Reclaimed", "*v1.ResourceClaim b/newer Reclaimed", "*v1.Pod a/waiting ReclaimingGuarantee"},
		},
		// gpu-0 is held whole, so its plugin withdraws its partitions: the
		// node publishes no 3g.40gb at all. The model still holds them, and
		// the whole GPU's pod is evicted for a MIG pod.
		"withdrawn partitions count once their blocker is gone": {
			guaranteeA: "40Gi", guaranteeC: "80Gi",
			held: []held{
				{ns: "b", claim: "b-whole", class: gpuapi.ClassGPU, device: "gpu-0", minute: 1},
				{ns: "c", claim: "c-whole", class: gpuapi.ClassGPU, device: "gpu-1", minute: 0},
			},
			want:    mig3g,
			evicted: []string{"b/pod-b-whole"},
			events:  []string{"*v1.Pod b/pod-b-whole Reclaimed", "*v1.ResourceClaim b/b-whole Reclaimed", "*v1.Pod a/waiting ReclaimingGuarantee"},
		},
		// A tenant at its guarantee is never a victim, even for a tenant
		// below its own.
		"a tenant at its guarantee keeps its pods": {
			guaranteeA: "80Gi", guaranteeC: "160Gi",
			held: []held{
				{ns: "c", claim: "c0", class: gpuapi.ClassGPU, device: "gpu-0", minute: 5},
				{ns: "c", claim: "c1", class: gpuapi.ClassGPU, device: "gpu-1", minute: 1},
			},
			want: whole,
		},
	}
	node := h100Node(t)
	classes, err := chart.DeviceClassObjects()
	if err != nil {
		t.Fatal(err)
	}
	scheme, err := Scheme()
	if err != nil {
		t.Fatal(err)
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, ctx := ktesting.NewTestContext(t)
			objs := []client.Object{reclaimTenant("a", tc.guaranteeA), reclaimTenant("b", ""), reclaimTenant("c", tc.guaranteeC)}
			for _, ns := range []string{"a", "b", "c"} {
				objs = append(objs, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{tenancyv1.LabelCapsuleTenant: ns}}})
			}
			for _, dc := range classes {
				objs = append(objs, dc)
			}
			objs = append(objs, &corev1.Node{
				ObjectMeta: metav1.ObjectMeta{Name: "n1", Labels: map[string]string{"kubernetes.io/hostname": "n1", "zone": "here"}},
				Spec:       corev1.NodeSpec{Taints: tc.taints},
			})
			var evicted []string
			c := withIndexes(fake.NewClientBuilder()).WithScheme(scheme).WithObjects(append(objs, publish(node, nil)...)...).
				WithInterceptorFuncs(interceptor.Funcs{
					SubResourceCreate: func(ctx context.Context, c client.Client, sub string, obj client.Object, subObj client.Object, opts ...client.SubResourceCreateOption) error {
						if _, ok := subObj.(*policyv1.Eviction); ok && sub == "eviction" {
							evicted = append(evicted, obj.GetNamespace()+"/"+obj.GetName())
						}
						return c.SubResource(sub).Create(ctx, obj, subObj, opts...)
					},
				}).Build()
			rec := &eventLog{}
			// The manager's cached client is c; its API reader counts
			// the requests a pass would make to the API server.
			api := &countingAPIReader{Reader: c}
			r := newManagedReclaimer(managerClientsOf{cached: c, api: api}, rec)
			r.now = func() time.Time { return reclaimT0.Add(time.Hour + time.Second) }
			// The first pass sees n1 with nothing prepared.
			if err := r.sync(ctx); err != nil {
				t.Fatal(err)
			}

			prepared := map[string]bool{}
			for _, h := range tc.held {
				claim, pod := h.objects()
				prepared[h.device] = true
				for _, o := range []client.Object{claim, pod} {
					if err := c.Create(ctx, o); err != nil {
						t.Fatal(err)
					}
				}
			}
			claim, pod := waitingFor(tc.want)
			pod.Spec.NodeSelector = tc.nodeSelector
			pod.Spec.Affinity = tc.affinity
			pod.Spec.Tolerations = tc.tolerations
			before := testutil.ToFloat64(reclaimedClaims.WithLabelValues("b", "a"))
			for _, o := range []client.Object{claim, pod} {
				if err := c.Create(ctx, o); err != nil {
					t.Fatal(err)
				}
			}
			if err := c.DeleteAllOf(ctx, &resourceapi.ResourceSlice{}); err != nil {
				t.Fatal(err)
			}
			for _, o := range publish(node, prepared) {
				if err := c.Create(ctx, o); err != nil {
					t.Fatal(err)
				}
			}
			// A second pass evicts no more: the victims' claims are
			// reserved for pods that are gone, so their devices count as
			// free, and the waiting pod fits.
			for range 2 {
				if err := r.sync(ctx); err != nil {
					t.Fatal(err)
				}
			}
			// Each pass read the waiting pod and the victims' pods; none
			// of the three passes asked the API server for anything.
			if len(api.requests) != 0 {
				t.Errorf("3 reclaim passes made %d API requests, want none: %v", len(api.requests), api.requests)
			}
			slices.Sort(evicted)
			if diff := cmp.Diff(tc.evicted, evicted); diff != "" {
				t.Errorf("evicted (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.events, rec.events); diff != "" {
				t.Errorf("events (-want +got):\n%s", diff)
			}
			if got := testutil.ToFloat64(reclaimedClaims.WithLabelValues("b", "a")) - before; got != float64(len(tc.evicted)) {
				t.Errorf("tessera_reclaim_evicted_claims_total{tenant=b,for=a} grew by %v, want %d", got, len(tc.evicted))
			}
		})
	}
}

// managerClientsOf is a manager's clients: its cached client and its
// reader of the API server.
type managerClientsOf struct {
	cached client.Client
	api    client.Reader
}

func (m managerClientsOf) GetClient() client.Client    { return m.cached }
func (m managerClientsOf) GetAPIReader() client.Reader { return m.api }

// countingAPIReader records every read that goes to the API server rather
// than to the cache.
type countingAPIReader struct {
	client.Reader
	requests []string
}

func (c *countingAPIReader) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	c.requests = append(c.requests, fmt.Sprintf("get %T %s", obj, key))
	return c.Reader.Get(ctx, key, obj, opts...)
}

func (c *countingAPIReader) List(ctx context.Context, list client.ObjectList, opts ...client.ListOption) error {
	c.requests = append(c.requests, fmt.Sprintf("list %T", list))
	return c.Reader.List(ctx, list, opts...)
}

// TestCacheHoldsPodsThatHoldDevices: reclaim reads pods from the cache, so
// the cache must hold every pod that may hold devices, the running ones
// included, and may leave out only terminated pods. The idle marker reads
// the idle reports from it too: the Leases of the idle-report namespace,
// and no other namespace's.
func TestCacheHoldsPodsThatHoldDevices(t *testing.T) {
	var sel, leases cache.ByObject
	for k, v := range cacheOptions(Options{IdleReportNamespace: "tessera-system"}).ByObject {
		// The map is keyed by object pointers: find the entries by type.
		switch k.(type) {
		case *corev1.Pod:
			sel = v
		case *coordinationv1.Lease:
			leases = v
		}
	}
	if diff := cmp.Diff(map[string]cache.Config{"tessera-system": {}}, leases.Namespaces); diff != "" {
		t.Errorf("the cache's Lease namespaces (-want +got):\n%s", diff)
	}
	if sel.Field == nil {
		t.Fatal("the cache has no field selector for pods")
	}
	for phase, want := range map[corev1.PodPhase]bool{
		corev1.PodPending: true, corev1.PodRunning: true, corev1.PodUnknown: true,
		corev1.PodSucceeded: false, corev1.PodFailed: false,
	} {
		if got := sel.Field.Matches(fields.Set{"status.phase": string(phase)}); got != want {
			t.Errorf("cache holds %s pods: %t, want %t", phase, got, want)
		}
	}
}
