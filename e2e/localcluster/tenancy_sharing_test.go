package localcluster

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/internal/testing/builder"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

const (
	// sharesPerGPU shares of shareSize fill a tenancy-node GPU.
	sharesPerGPU = 6
	// settleTimeout bounds how long a pod may wait once a GPU it could use
	// is free. kube-scheduler retries within seconds of a relevant change
	// (backoff at most 10 s, binding conditions polled every 5 s); its
	// fallback, the flush of unschedulable pods, comes after 5 minutes, so
	// a pass here never relies on the flush.
	settleTimeout = 90 * time.Second
)

// shareSize is a sixth of a tenancy-node GPU's shared memory, in the
// request policy's 256Mi steps: six shares fill one GPU.
func shareSize(t *testing.T) string {
	t.Helper()
	list, err := local.Client.ResourceV1().ResourceSlices().List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range list.Items {
		if s.Spec.Pool.Name != tenancyNode.Name {
			continue
		}
		for _, d := range s.Spec.Devices {
			if d.Name == "gpu-0-shared" {
				capacity := d.Capacity[gpuapi.CapMemory].Value
				step := int64(256 << 20)
				return resource.NewQuantity(capacity.Value()/sharesPerGPU/step*step, resource.BinarySI).String()
			}
		}
	}
	t.Fatal("the tenancy node publishes no gpu-0-shared")
	return ""
}

// gpuUse is what the claims' allocations hold of one shared GPU.
type gpuUse struct {
	// shares counts every allocated share, decided or not.
	shares int
	// allocated are the namespaces of those shares; serving, those of the
	// shares the controller admitted (a pod runs only on an admitted share).
	allocated, serving []string
}

// gpuUses reads the shared GPUs' use by the namespaces' claims, keyed
// pool/device. One list of every namespace's claims is one snapshot of the
// API server: listing namespace by namespace could see a claim of the first
// that was deleted before the second's was admitted, two tenants at once
// that never were.
func gpuUses(ctx context.Context, namespaces ...string) (map[string]*gpuUse, error) {
	list, err := local.Client.ResourceV1().ResourceClaims(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	out := map[string]*gpuUse{}
	for i := range list.Items {
		c := &list.Items[i]
		ns := c.Namespace
		if !slices.Contains(namespaces, ns) {
			continue
		}
		for _, d := range tenancy.SharedDevices(c) {
			key := d.Pool + "/" + d.Device
			u := out[key]
			if u == nil {
				u = &gpuUse{}
				out[key] = u
			}
			u.shares++
			if !slices.Contains(u.allocated, ns) {
				u.allocated = append(u.allocated, ns)
			}
			if tenancy.ClaimState(c) == tenancy.Admitted && !slices.Contains(u.serving, ns) {
				u.serving = append(u.serving, ns)
			}
		}
	}
	return out, nil
}

// sharingTaints are the controller's sharing taints, pool/device -> value.
func sharingTaints(ctx context.Context) (map[string]string, error) {
	list, err := local.Client.ResourceV1().DeviceTaintRules().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, r := range list.Items {
		if r.Spec.Taint.Key == tenancyv1.TaintKeyTenant && r.Spec.DeviceSelector != nil && r.Spec.DeviceSelector.Device != nil {
			out[*r.Spec.DeviceSelector.Pool+"/"+*r.Spec.DeviceSelector.Device] = r.Spec.Taint.Value
		}
	}
	return out, nil
}

// sharingWatch polls the claims' allocations until stopped and records every
// moment a shared GPU served two tenants' namespaces.
type sharingWatch struct {
	stop    context.CancelFunc
	done    chan struct{}
	mu      sync.Mutex
	polls   int
	raced   int // polls that saw shares of two namespaces allocated, undecided
	serving []string
}

func watchSharing(ctx context.Context, namespaces ...string) *sharingWatch {
	ctx, stop := context.WithCancel(ctx)
	w := &sharingWatch{stop: stop, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		_ = wait.PollUntilContextCancel(ctx, pollEvery, true, func(ctx context.Context) (bool, error) {
			uses, err := gpuUses(ctx, namespaces...)
			if err != nil {
				return false, nil
			}
			w.mu.Lock()
			defer w.mu.Unlock()
			w.polls++
			raced := false
			for gpu, u := range uses {
				if len(u.serving) > 1 {
					w.serving = append(w.serving, fmt.Sprintf("%s serves %v", gpu, u.serving))
				}
				raced = raced || len(u.allocated) > 1
			}
			if raced {
				w.raced++
			}
			return false, nil
		})
	}()
	return w
}

// check fails the test if any poll so far saw a GPU serve two tenants.
func (w *sharingWatch) check(t *testing.T) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.serving) > 0 {
		t.Fatalf("%d of %d polls of the claims' allocations saw a GPU serve two tenants, first: %s", len(w.serving), w.polls, w.serving[0])
	}
}

func (w *sharingWatch) finish(t *testing.T) {
	w.stop()
	<-w.done
	t.Logf("%d polls of the claims' allocations; %d saw two tenants' undecided shares on one GPU (the race the binding check decides)", w.polls, w.raced)
}

// sharePod creates a pod of namespace ns on the tenancy nodes whose claim is
// made from the template "share". Safe to call from several goroutines.
func sharePod(ctx context.Context, ns, name string) error {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PodSpec{
			ResourceClaims: []corev1.PodResourceClaim{{Name: "gpu", ResourceClaimTemplateName: new("share")}},
			Containers: []corev1.Container{{
				Name: "ctr", Image: "registry.k8s.io/pause:3.10",
				Resources: corev1.ResourceRequirements{Claims: []corev1.ResourceClaim{{Name: "gpu"}}},
			}},
			TerminationGracePeriodSeconds: new(int64(0)),
		},
	}
	onTenancyNodes(pod)
	_, err := local.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
	return err
}

// podsOf lists the pods of the namespaces that are not being deleted.
func podsOf(ctx context.Context, namespaces ...string) ([]corev1.Pod, error) {
	var out []corev1.Pod
	for _, ns := range namespaces {
		list, err := local.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, err
		}
		for _, p := range list.Items {
			if p.DeletionTimestamp == nil {
				out = append(out, p)
			}
		}
	}
	return out, nil
}

// entitled are the unbound pods that a GPU of the tenancy node could take
// now: a GPU with room for one more share that serves no other namespace
// (each test namespace here belongs to a tenant of its own). Pods being
// allocated count against the GPUs they are allocated.
func entitled(ctx context.Context, gpus []string, namespaces ...string) ([]corev1.Pod, error) {
	pods, err := podsOf(ctx, namespaces...)
	if err != nil {
		return nil, err
	}
	uses, err := gpuUses(ctx, namespaces...)
	if err != nil {
		return nil, err
	}
	var out []corev1.Pod
	for _, p := range pods {
		if p.Spec.NodeName != "" || claimAllocated(ctx, &p) {
			continue
		}
		for _, gpu := range gpus {
			u := uses[gpu]
			if u == nil || (u.shares < sharesPerGPU && !slices.ContainsFunc(u.allocated, func(ns string) bool { return ns != p.Namespace })) {
				out = append(out, p)
				break
			}
		}
	}
	return out, nil
}

// claimAllocated says whether the pod's generated claim is allocated (the
// scheduler has placed it and is waiting to bind it).
func claimAllocated(ctx context.Context, p *corev1.Pod) bool {
	for _, s := range p.Status.ResourceClaimStatuses {
		if s.ResourceClaimName == nil {
			continue
		}
		c, err := local.Client.ResourceV1().ResourceClaims(p.Namespace).Get(ctx, *s.ResourceClaimName, metav1.GetOptions{})
		if err == nil && c.Status.Allocation != nil {
			return true
		}
	}
	return false
}

// waitSettled waits until every bound pod runs and no unbound pod could be
// placed on a GPU of the tenancy node: every pod that can run, runs. On
// timeout it fails with the pods that could have run and their events.
func waitSettled(ctx context.Context, t *testing.T, what string, gpus []string, namespaces ...string) {
	t.Helper()
	var stuck []corev1.Pod
	var notRunning []string
	err := wait.PollUntilContextTimeout(ctx, pollEvery, settleTimeout, true, func(ctx context.Context) (bool, error) {
		pods, err := podsOf(ctx, namespaces...)
		if err != nil {
			return false, nil
		}
		notRunning = notRunning[:0]
		for _, p := range pods {
			if p.Spec.NodeName != "" && p.Status.Phase != corev1.PodRunning {
				notRunning = append(notRunning, p.Name)
			}
		}
		if stuck, err = entitled(ctx, gpus, namespaces...); err != nil {
			return false, nil
		}
		return len(notRunning) == 0 && len(stuck) == 0, nil
	})
	if err != nil {
		var why []string
		for i := range stuck {
			why = append(why, stuck[i].Namespace+"/"+stuck[i].Name+": "+eventSummary(&stuck[i]))
		}
		uses, _ := gpuUses(ctx, namespaces...)
		var gpuState []string
		for _, g := range gpus {
			if u := uses[g]; u != nil {
				gpuState = append(gpuState, fmt.Sprintf("%s: %d shares of %v", g, u.shares, u.allocated))
			}
		}
		t.Fatalf("%s: not settled within %s: bound, not running: %v; unbound although a GPU has room: %v; GPUs: %v", what, settleTimeout, notRunning, why, gpuState)
	}
}

// waitShapedAs waits until the API server shapes a share claim created in
// namespace ns as tenant's sharing policy alone does. For about a second after
// a namespace joins a tenant, the untenanted sharing binding (kept by the
// controller) still covers it, and both sharing policies shape its claims:
// admitted, but the tenant's "own" alternative also tolerates free GPUs, so
// its preference for the tenant's own GPUs is lost. Tests that check the
// shape or the preference start after that.
func waitShapedAs(ctx context.Context, t *testing.T, ns string, tenant *tenancyv1.GPUTenant) {
	t.Helper()
	share := []resourceapi.DeviceRequest{builder.MakeRequest("gpu", gpuapi.ClassShared).Obj()}
	want := tenancy.SharingRequests(tenancy.SharingGroup(tenant), share)
	var last []resourceapi.DeviceRequest
	err := wait.PollUntilContextTimeout(ctx, pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		claim, err := local.Client.ResourceV1().ResourceClaims(ns).Create(ctx, &resourceapi.ResourceClaim{
			ObjectMeta: metav1.ObjectMeta{GenerateName: "probe-", Namespace: ns},
			Spec:       claimSpec(share...),
		}, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err != nil {
			return false, nil
		}
		last = claim.Spec.Devices.Requests
		return cmp.Equal(last, want), nil
	})
	if err != nil {
		t.Fatalf("claims in namespace %s not shaped as tenant %s's alone within %s: %+v", ns, tenant.Name, waitTimeout, last)
	}
}

// waitTaintValue waits until the sharing taint of gpu (pool/device) has
// value, e.g. GroupFree once its last share has gone.
func waitTaintValue(ctx context.Context, t *testing.T, gpu, value string) {
	t.Helper()
	var last map[string]string
	err := wait.PollUntilContextTimeout(ctx, pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		var err error
		last, err = sharingTaints(ctx)
		return err == nil && last[gpu] == value, nil
	})
	if err != nil {
		t.Fatalf("sharing taint of %s is %q, want %q, within %s", gpu, last[gpu], value, waitTimeout)
	}
}

// withTolerations returns r, an exact request, with tols.
func withTolerations(r resourceapi.DeviceRequest, tols ...resourceapi.DeviceToleration) resourceapi.DeviceRequest {
	r.Exactly.Tolerations = tols
	return r
}

// tenancyGPUs are the tenancy node's shared GPUs, pool/device.
func tenancyGPUs() []string {
	return []string{tenancyNode.Name + "/gpu-0-shared", tenancyNode.Name + "/gpu-1-shared"}
}

// TestShareRetriedAfterBindingWait: kube-scheduler 1.37 counts a share twice
// while its pod waits for the binding condition, so a pod tried in that
// window finds the GPU full although it has room; the window's end is no
// event the scheduler retries pods on. Four shares of one GPU run; a fifth
// is allocated and waits for the controller; a sixth is created in that
// window. Both must run well before the scheduler's 5-minute flush: the
// controller stamps the GPU's sharing taint again when the fifth is bound.
func TestShareRetriedAfterBindingWait(t *testing.T) {
	tenant := newTenant(t, "requeue", tenancyv1.GPUTenantSpec{AllowedDeviceClasses: []string{gpuapi.ClassShared}})
	ns := tenantNamespace(t, tenant.Name)
	ctx := testContext(t)
	waitShapedAs(ctx, t, ns, tenant)
	// Shares of earlier tests may still be going.
	waitTaintValue(ctx, t, tenancyGPUs()[0], tenancyv1.GroupFree)
	gpu0 := fmt.Sprintf("device.attributes[%q].%s == 0", gpuapi.DriverName, gpuapi.AttrIndex)
	createTemplate(t, ns, "share", builder.MakeRequest("gpu", gpuapi.ClassShared).Memory(shareSize(t)).Selector(gpu0).Obj())
	for i := range sharesPerGPU - 2 {
		if err := sharePod(ctx, ns, fmt.Sprintf("share-%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	waitSettled(ctx, t, "four shares", tenancyGPUs()[:1], ns)

	if err := sharePod(ctx, ns, "fifth"); err != nil {
		t.Fatal(err)
	}
	var fifth *corev1.Pod
	err := wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, waitTimeout, true, func(ctx context.Context) (bool, error) {
		p, err := local.Client.CoreV1().Pods(ns).Get(ctx, "fifth", metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		fifth = p
		return claimAllocated(ctx, p), nil
	})
	if err != nil {
		t.Fatalf("the fifth share is not allocated: %v", err)
	}
	if err := sharePod(ctx, ns, "sixth"); err != nil {
		t.Fatal(err)
	}
	sixth, err := local.Client.CoreV1().Pods(ns).Get(ctx, "sixth", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	fifthUnbound := false
	if p, err := local.Client.CoreV1().Pods(ns).Get(ctx, "fifth", metav1.GetOptions{}); err == nil {
		fifthUnbound = p.Spec.NodeName == ""
	}
	waitRunning(t, fifth)
	waitRunning(t, sixth)
	// Whether the sixth was tried inside the window (and so turned away) is
	// up to the scheduler's timing; say which case this run was.
	turnedAway := len(events(ctx, sixth, "FailedScheduling")) > 0
	t.Logf("the fifth was unbound when the sixth was created: %t; the sixth was turned away at first: %t", fifthUnbound, turnedAway)
}

// TestTenantExclusiveSharing: two Exclusive tenants share the tenancy node's
// two GPUs (six shares fill one). The sharing policy shapes their claims as
// its Go twin says; a tenant's share goes to the GPU it holds before a free
// one that comes first. A churn phase creates and deletes their share pods at
// random, several at a time, more than fit; then, with no new pods, every pod
// that a GPU has room for must run; the controller goes down while one
// tenant's pods all go, and once it is back the other tenant's waiting pods
// run on the GPUs that were freed; at last no tenant's taint is left (every
// GPU is free). At every poll of the claims' allocations, no GPU serves two
// tenants.
func TestTenantExclusiveSharing(t *testing.T) {
	// MIG too: the tolerations subtest shows how the policy shapes MIG requests.
	spec := tenancyv1.GPUTenantSpec{AllowedDeviceClasses: []string{gpuapi.ClassShared, gpuapi.ClassMIG}}
	a, b := newTenant(t, "share-a", spec), newTenant(t, "share-b", spec)
	nsA, nsB := tenantNamespace(t, a.Name), tenantNamespace(t, b.Name)
	ctx, cancel := context.WithTimeout(t.Context(), 12*time.Minute)
	defer cancel()
	namespaces := []string{nsA, nsB}
	gpus := tenancyGPUs()

	t.Run("APIs served", func(t *testing.T) {
		// Both are GA and on by default in 1.37: the cluster runs with no
		// feature gate or runtime-config for them.
		for gv, resource := range map[string]string{"resource.k8s.io/v1": "devicetaintrules", "admissionregistration.k8s.io/v1": "mutatingadmissionpolicies"} {
			list, err := local.Client.Discovery().ServerResourcesForGroupVersion(gv)
			if err != nil {
				t.Fatalf("discover %s: %v", gv, err)
			}
			if !slices.ContainsFunc(list.APIResources, func(r metav1.APIResource) bool { return r.Name == resource }) {
				t.Errorf("the API server does not serve %s in %s", resource, gv)
			}
		}
	})

	t.Run("tolerations", func(t *testing.T) {
		// The sharing policy shapes the tenant's claims exactly as its Go
		// twin, tenancy.SharingRequests, says: a share asks for the tenant's
		// own GPUs first, then free ones; other requests get both tolerations.
		// (A user's toleration of the untenanted GPUs is dropped, as the
		// untenanted policy's would be while the namespace joins.)
		waitShapedAs(ctx, t, nsA, a)
		waitShapedAs(ctx, t, nsB, b)
		for name, r := range map[string]resourceapi.DeviceRequest{
			"share":                 builder.MakeRequest("gpu", gpuapi.ClassShared).Memory("1Gi").Obj(),
			"MIG partition":         builder.MakeRequest("gpu", gpuapi.ClassMIG).Profile("1g.18gb").Obj(),
			"firstAvailable":        builder.FirstAvailable("gpu", builder.MakeRequest("mig", gpuapi.ClassMIG), builder.MakeRequest("share", gpuapi.ClassShared)),
			"own toleration":        withTolerations(builder.MakeRequest("gpu", gpuapi.ClassShared).Obj(), tenancy.Toleration(a.Name)),
			"free toleration":       withTolerations(builder.MakeRequest("gpu", gpuapi.ClassShared).Obj(), tenancy.Toleration(tenancyv1.GroupFree)),
			"untenanted toleration": withTolerations(builder.MakeRequest("gpu", gpuapi.ClassShared).Obj(), tenancy.Toleration(tenancyv1.GroupUntenanted)),
		} {
			t.Run(name, func(t *testing.T) {
				claim, err := local.Client.ResourceV1().ResourceClaims(nsA).Create(ctx, &resourceapi.ResourceClaim{
					ObjectMeta: metav1.ObjectMeta{GenerateName: "probe-", Namespace: nsA},
					Spec:       claimSpec(r),
				}, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
				if err != nil {
					t.Fatalf("claim refused: %v", err)
				}
				if diff := cmp.Diff(tenancy.SharingRequests(a.Name, []resourceapi.DeviceRequest{r}), claim.Spec.Devices.Requests); diff != "" {
					t.Errorf("the policy's requests differ from tenancy.SharingRequests (-Go +API server):\n%s", diff)
				}
			})
		}
		// Tolerating another tenant's GPUs, or everyone's, is refused.
		for name, tol := range map[string]resourceapi.DeviceToleration{
			"other tenant": tenancy.Toleration(a.Name),
			// Not the policy's own toleration, which would be dropped.
			"untenanted, every effect": {Key: tenancyv1.TaintKeyTenant, Operator: resourceapi.DeviceTolerationOpEqual, Value: tenancyv1.GroupUntenanted},
			"any tenant":               {Key: tenancyv1.TaintKeyTenant, Operator: resourceapi.DeviceTolerationOpExists},
		} {
			s := claimSpec(withTolerations(builder.MakeRequest("gpu", gpuapi.ClassShared).Obj(), tol))
			t.Run(name, func(t *testing.T) {
				// For a moment after nsB joined B, the API server's policy
				// bindings may still see it as a namespace of no tenant, and
				// the outsiders policy may be the one to refuse (it names no
				// tenant); either refusal says what was refused.
				wantRefused(t, createClaim(ctx, nsB, s), "tolerates a tenancy taint")
			})
		}
	})
	t.Run("a namespace joining the tenant", func(t *testing.T) {
		// When a namespace joins A, A's policies select it at once, while
		// the untenanted sharing binding (kept by the controller) covers it
		// for about a second more. Claims created then are admitted, shaped
		// either as A's or (while the API server still has the namespace's
		// old labels) as untenanted ones. One exception, fail closed: the
		// API server's mutating and validating admission each read the
		// namespace's labels when they run, so a claim created within
		// milliseconds of the label change can be shaped by the old labels
		// (untenanted) and validated by the new ones (A's), which refuse
		// the untenanted toleration; created again, it is admitted.
		ns := newNamespace(t)
		share := []resourceapi.DeviceRequest{builder.MakeRequest("gpu", gpuapi.ClassShared).Obj()}
		asA := tenancy.SharingRequests(a.Name, share)
		asUntenanted := tenancy.SharingRequests(tenancyv1.GroupUntenanted, share)
		both := tenancy.SharingRequests(a.Name, asUntenanted)
		probe := func() (*resourceapi.ResourceClaim, error) {
			return local.Client.ResourceV1().ResourceClaims(ns).Create(ctx, &resourceapi.ResourceClaim{
				ObjectMeta: metav1.ObjectMeta{GenerateName: "probe-", Namespace: ns},
				Spec:       claimSpec(share...),
			}, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		}
		if c, err := probe(); err != nil || !cmp.Equal(c.Spec.Devices.Requests, asUntenanted) {
			t.Fatalf("a claim of a namespace of no tenant: err %v, requests %+v, want %+v", err, c, asUntenanted)
		}
		labelNamespace(t, ns, map[string]string{tenancyv1.LabelCapsuleTenant: a.Name})
		seen := map[string]int{}
		deadline := time.Now().Add(10 * time.Second)
		for i := 0; i < 500 && seen["as A's"] < 5 && time.Now().Before(deadline); i++ {
			c, err := probe()
			switch {
			case err != nil && strings.Contains(err.Error(), "GPUTenant "+a.Name+": request gpu tolerates a tenancy taint") && seen["as A's"] == 0:
				seen["refused in the label change"]++
			case err != nil:
				t.Fatalf("a claim created while the namespace joins tenant %s: %v", a.Name, err)
			case cmp.Equal(c.Spec.Devices.Requests, asA):
				seen["as A's"]++
			case cmp.Equal(c.Spec.Devices.Requests, both):
				seen["by both policies"]++
			case cmp.Equal(c.Spec.Devices.Requests, asUntenanted):
				seen["as untenanted (old labels)"]++
			default:
				t.Fatalf("a claim created while the namespace joins tenant %s has requests %+v", a.Name, c.Spec.Devices.Requests)
			}
		}
		t.Logf("claims shaped: %v", seen)
		if seen["as A's"] == 0 {
			t.Errorf("no claim shaped as tenant %s's within 10s of joining it", a.Name)
		}
	})
	// The probe claims above are not pods' claims; they hold nothing.
	for _, ns := range namespaces {
		if err := local.Client.ResourceV1().ResourceClaims(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	size := shareSize(t)
	for _, ns := range namespaces {
		createTemplate(t, ns, "share", builder.MakeRequest("gpu", gpuapi.ClassShared).Memory(size).Obj())
	}
	watch := watchSharing(ctx, namespaces...)
	defer watch.finish(t)

	t.Run("own GPUs before free ones", func(t *testing.T) {
		// B takes the first free GPU, A the next; B's share goes, which
		// frees the GPU that comes first; A's next share still goes to the
		// GPU A holds, by its "own" alternative.
		start := func(ns, name, wantGPU, wantRequest string) {
			t.Helper()
			if err := sharePod(ctx, ns, name); err != nil {
				t.Fatal(err)
			}
			p, err := local.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			a := waitAllocated(t, p)
			r := a.Devices()[0]
			if got := r.Pool + "/" + r.Device; got != wantGPU || r.Request != wantRequest {
				t.Fatalf("%s/%s got %s for request %s, want %s for %s", ns, name, got, r.Request, wantGPU, wantRequest)
			}
			waitRunning(t, p)
		}
		own, free := "gpu/"+tenancyv1.SubrequestOwn, "gpu/"+tenancyv1.SubrequestAny
		// Shares of earlier tests may still be going.
		for _, gpu := range gpus {
			waitTaintValue(ctx, t, gpu, tenancyv1.GroupFree)
		}
		start(nsB, "b-first", gpus[0], free)
		start(nsA, "a-first", gpus[1], free)
		if err := local.Client.CoreV1().Pods(nsB).Delete(ctx, "b-first", metav1.DeleteOptions{GracePeriodSeconds: new(int64(0))}); err != nil {
			t.Fatal(err)
		}
		waitTaintValue(ctx, t, gpus[0], tenancyv1.GroupFree)
		start(nsA, "a-second", gpus[1], own)
		if err := local.Client.CoreV1().Pods(nsA).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: new(int64(0))}, metav1.ListOptions{}); err != nil {
			t.Fatal(err)
		}
		waitTaintValue(ctx, t, gpus[1], tenancyv1.GroupFree)
	})
	watch.check(t)

	// Churn: rounds of a few concurrent creations (at most perTenant live
	// pods of a tenant, so that each fits the node alone but the two do not
	// fit together) and a few concurrent deletes of any pods, running or not.
	const (
		perTenant = 8
		rounds    = 16
	)
	seed := time.Now().UnixNano()
	t.Logf("churn with seed %d", seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 0))
	churnEnd := time.Now().Add(3 * time.Minute)
	created, deleted := 0, 0
	for round := 0; round < rounds && time.Now().Before(churnEnd); round++ {
		pods, err := podsOf(ctx, namespaces...)
		if err != nil {
			t.Fatal(err)
		}
		live := map[string]int{}
		for _, p := range pods {
			live[p.Namespace]++
		}
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for range 1 + rng.IntN(4) {
			ns := namespaces[rng.IntN(2)]
			if live[ns] >= perTenant {
				continue
			}
			live[ns]++
			created++
			name := fmt.Sprintf("share-%d", created)
			wg.Go(func() { errs <- sharePod(ctx, ns, name) })
		}
		var victims []corev1.Pod
		for _, i := range rng.Perm(len(pods))[:min(len(pods), rng.IntN(4))] {
			victims = append(victims, pods[i])
		}
		for _, v := range victims {
			deleted++
			wg.Go(func() {
				err := local.Client.CoreV1().Pods(v.Namespace).Delete(ctx, v.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64(0))})
				if apierrors.IsNotFound(err) {
					err = nil
				}
				errs <- err
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatalf("churn round %d: %v", round, err)
			}
		}
		// Pace the rounds by the deletes taking effect.
		err = wait.PollUntilContextTimeout(ctx, pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
			for _, v := range victims {
				if _, err := local.Client.CoreV1().Pods(v.Namespace).Get(ctx, v.Name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
					return false, nil
				}
			}
			return true, nil
		})
		if err != nil {
			t.Fatalf("churn round %d: deleted pods not gone: %v", round, err)
		}
	}
	t.Logf("churn: %d pods created, %d deleted", created, deleted)
	watch.check(t)

	// No new pods: every pod that a GPU has room for runs.
	waitSettled(ctx, t, "after churn", gpus, namespaces...)
	watch.check(t)

	// Tenant B takes every GPU it can: with A's pods gone, all of B's run.
	// The controller is down while A's pods go, so A's taints outlive them;
	// back up, it removes them (from the allocations, not from memory), and
	// the scheduler retries B's pods on that change.
	topUp := perTenant - countIn(ctx, t, nsB)
	for i := range topUp {
		if err := sharePod(ctx, nsB, fmt.Sprintf("b-top-%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	waitSettled(ctx, t, "B topped up", gpus, namespaces...)
	tenancyController.Kill()
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			if err := tenancyController.Start(context.Background()); err != nil {
				t.Errorf("restart controller: %v", err)
			}
		}
	})
	if err := local.Client.CoreV1().Pods(nsA).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: new(int64(0))}, metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	err := wait.PollUntilContextTimeout(ctx, pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		claims, err := local.Client.ResourceV1().ResourceClaims(nsA).List(ctx, metav1.ListOptions{})
		return err == nil && len(claims.Items) == 0, nil
	})
	if err != nil {
		t.Fatalf("claims of %s not gone: %v", nsA, err)
	}
	if err := tenancyController.Start(ctx); err != nil {
		t.Fatalf("restart controller: %v", err)
	}
	restarted = true
	err = wait.PollUntilContextTimeout(ctx, pollEvery, settleTimeout, true, func(ctx context.Context) (bool, error) {
		pods, err := podsOf(ctx, nsB)
		if err != nil {
			return false, nil
		}
		running := 0
		for _, p := range pods {
			if p.Status.Phase == corev1.PodRunning {
				running++
			}
		}
		return running == perTenant && len(pods) == perTenant, nil
	})
	if err != nil {
		_, pending := boundPods(ctx, nsB)
		var why []string
		for _, p := range pending {
			why = append(why, p.Name+": "+eventSummary(p))
		}
		taints, _ := sharingTaints(ctx)
		t.Fatalf("B's %d pods not all running within %s of A's GPU being freed: unbound %v; taints %v", perTenant, settleTimeout, why, taints)
	}
	taints, err := sharingTaints(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for gpu, v := range taints {
		if v != b.Name && v != tenancyv1.GroupFree {
			t.Errorf("%s tainted %q after A's shares went, want only B's taints and free GPUs", gpu, v)
		}
	}
	watch.check(t)

	// The last shares go: no tenant's taint is left, every GPU is free.
	if err := local.Client.CoreV1().Pods(nsB).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: new(int64(0))}, metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, gpu := range gpus {
		waitTaintValue(ctx, t, gpu, tenancyv1.GroupFree)
	}
	taints, err = sharingTaints(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for gpu, v := range taints {
		if v != tenancyv1.GroupFree {
			t.Errorf("%s still tainted %q after the last share went", gpu, v)
		}
	}
	watch.check(t)
}

// countIn counts the pods of namespace ns that are not being deleted.
func countIn(ctx context.Context, t *testing.T, ns string) int {
	t.Helper()
	pods, err := podsOf(ctx, ns)
	if err != nil {
		t.Fatal(err)
	}
	return len(pods)
}
