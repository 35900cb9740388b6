package localcluster

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/util/retry"
	crclient "sigs.k8s.io/controller-runtime/pkg/client"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/e2e/framework/cluster"
	"github.com/tessera-gpu/tessera/internal/controller"
	"github.com/tessera-gpu/tessera/internal/testing/builder"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

// Tenancy's nodes run the plugin with --tenancy, so their devices carry the
// binding conditions; they are tainted so that only tenancy tests' pods go
// there (the other tests keep binding without waiting for the controller).
// poolNode's GPU is in the dedicated pool poolA: its plugin publishes the
// pool attribute, and its Node carries the admin's label that tenancy checks
// that attribute against (tenancyv1.LabelNodePool). kindsNode, tainted
// like them, carries its own label instead of theirs, so that only pods
// pinned to it go there and the tests that count on the tenancy node's two
// GPUs keep them.
const (
	tenancyTaintKey = "e2e.tessera.dev/tenancy"
	kindsLabelKey   = "e2e.tessera.dev/tenancy-kinds"
	poolA           = "pool-a"
)

var (
	tenancyNode = cluster.NodeOptions{
		Name: "gpu-node-tenancy", NVML: "mock:dgxh200:2",
		Labels: map[string]string{tenancyTaintKey: "true"},
		// Claims below half busy count as idle in the node's report; the
		// controller marks them only where a test turns idle marking on.
		PluginArgs: []string{"--tenancy", "--idle-threshold=0.5", "--claim-metrics-interval=2s"},
	}
	// kindsNode holds, for the tests that need them, whole GPUs, MIG
	// partitions and shares at once, with the tenancy node's plugin flags.
	kindsNode = cluster.NodeOptions{
		Name: "gpu-node-tenancy-kinds", NVML: "mock:dgxh200:3",
		Labels:     map[string]string{kindsLabelKey: "true"},
		PluginArgs: tenancyNode.PluginArgs,
	}
	poolNode = cluster.NodeOptions{
		Name: "gpu-node-pool-a", NVML: "mock:dgxh200:1",
		Labels:     map[string]string{tenancyTaintKey: "true", tenancyv1.LabelNodePool: poolA},
		PluginArgs: []string{"--tenancy", "--pool=" + poolA},
	}

	// tenancyController is the running dra-controller; tenants reads and
	// writes GPUTenants.
	tenancyController *cluster.Controller
	tenants           crclient.Client
)

// setUpTenancy taints the tenancy nodes and installs and starts the controller.
func setUpTenancy(ctx context.Context) error {
	for _, n := range []string{tenancyNode.Name, poolNode.Name, kindsNode.Name} {
		if err := taintNodeWith(ctx, n, tenancyTaintKey); err != nil {
			return err
		}
	}
	var err error
	tenancyController, err = local.InstallTenancy(ctx, cluster.DefaultControllerBinary())
	if err != nil {
		return err
	}
	scheme, err := controller.Scheme()
	if err != nil {
		return err
	}
	if tenants, err = crclient.New(local.Config, crclient.Options{Scheme: scheme}); err != nil {
		return err
	}
	return waitSharingInForce(ctx)
}

// waitSharingInForce waits until the chart's sharing policies are in force:
// a share claimed in a namespace of no tenant comes back shaped (the API
// server's policy plugin takes a second or so to load a policy and its
// binding), and every published shared GPU carries the free taint. A claim
// made before then tolerates no sharing taint, and the controller takes the
// free taints off every GPU while it waits (SharingReconciler.freeGPUs):
// the first test would run while the GPUs' taints change under it.
func waitSharingInForce(ctx context.Context) error {
	share := claimSpec(builder.MakeRequest("gpu", gpuapi.ClassShared).Obj())
	var why string
	err := wait.PollUntilContextTimeout(ctx, pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		c, err := local.Client.ResourceV1().ResourceClaims(metav1.NamespaceDefault).Create(ctx, &resourceapi.ResourceClaim{
			ObjectMeta: metav1.ObjectMeta{GenerateName: "probe-", Namespace: metav1.NamespaceDefault},
			Spec:       share,
		}, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err != nil {
			why = err.Error()
			return false, nil
		}
		if tenancy.BlockedByFreeTaint(c) {
			why = "a share claimed in namespace default tolerates no sharing taint"
			return false, nil
		}
		why = untaintedSharedGPU(ctx)
		return why == "", nil
	})
	if err != nil {
		return fmt.Errorf("sharing policies not in force within %s: %s", waitTimeout, why)
	}
	return nil
}

// untaintedSharedGPU names a published shared GPU without the free taint, or
// is "" when every one has it.
func untaintedSharedGPU(ctx context.Context) string {
	taints, err := sharingTaints(ctx)
	if err != nil {
		return err.Error()
	}
	list, err := local.Client.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{FieldSelector: "spec.driver=" + gpuapi.DriverName})
	if err != nil {
		return err.Error()
	}
	for _, s := range list.Items {
		for _, d := range s.Spec.Devices {
			gpu := s.Spec.Pool.Name + "/" + d.Name
			if strings.HasSuffix(d.Name, "-shared") && taints[gpu] != tenancyv1.GroupFree {
				return fmt.Sprintf("shared GPU %s has sharing taint %q, not %q", gpu, taints[gpu], tenancyv1.GroupFree)
			}
		}
	}
	return ""
}

func taintNodeWith(ctx context.Context, name, key string) error {
	node, err := local.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("get node %s: %w", name, err)
	}
	node.Spec.Taints = append(node.Spec.Taints, corev1.Taint{Key: key, Value: "true", Effect: corev1.TaintEffectNoSchedule})
	if _, err := local.Client.CoreV1().Nodes().Update(ctx, node, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("taint node %s: %w", name, err)
	}
	return nil
}

// onTenancyNodes lets a pod onto the tenancy nodes, and only onto them.
func onTenancyNodes(p *corev1.Pod) {
	p.Spec.NodeSelector = map[string]string{tenancyTaintKey: "true"}
	p.Spec.Tolerations = append(p.Spec.Tolerations, corev1.Toleration{Key: tenancyTaintKey, Operator: corev1.TolerationOpExists})
}

// onKindsNode pins a pod to kindsNode, with the given PriorityClass ("" for
// none).
func onKindsNode(priorityClass string) podOption {
	return func(p *corev1.Pod) {
		p.Spec.NodeSelector = map[string]string{"kubernetes.io/hostname": kindsNode.Name}
		p.Spec.Tolerations = append(p.Spec.Tolerations, corev1.Toleration{Key: tenancyTaintKey, Operator: corev1.TolerationOpExists})
		p.Spec.PriorityClassName = priorityClass
	}
}

// newTenant creates a GPUTenant with a unique name (the prefix plus a random
// suffix) that selects namespaces by Capsule's label, deleted after the test.
func newTenant(t *testing.T, prefix string, spec tenancyv1.GPUTenantSpec) *tenancyv1.GPUTenant {
	t.Helper()
	needCluster(t)
	name := prefix + "-" + rand.String(5)
	spec.NamespaceSelector = metav1.LabelSelector{MatchLabels: map[string]string{tenancyv1.LabelCapsuleTenant: name}}
	tenant := &tenancyv1.GPUTenant{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: spec}
	if err := tenants.Create(t.Context(), tenant); err != nil {
		t.Fatalf("create GPUTenant %s: %v", name, err)
	}
	t.Cleanup(func() {
		_ = tenants.Delete(context.Background(), tenant)
	})
	// The controller creates the tenant's binding; until the API server's
	// policy plugin has it, the tenant is not enforced.
	waitTenantCondition(t, name, tenancyv1.TenantReady, metav1.ConditionTrue)
	return tenant
}

// tenantNamespace creates a namespace of tenant (labelled as an admin would)
// and waits until the tenant is enforced in it.
func tenantNamespace(t *testing.T, tenant string) string {
	t.Helper()
	ns := newNamespace(t)
	labelNamespace(t, ns, map[string]string{tenancyv1.LabelCapsuleTenant: tenant})
	waitTenantNamespaces(t, tenant, ns)
	waitEnforced(t, ns)
	waitNotOutside(t, tenant, ns)
	return ns
}

// waitNotOutside waits until the outsiders policy, which holds namespaces of
// no tenant, has let go of ns. Its binding names the tenants' namespaces it
// leaves out, and the controller adds ns there only after it has seen ns
// join; until the API server has that binding, both the tenant's claims
// policy and the outsiders policy apply to ns, and a refusal may come from
// either (the tests check the claims policy's messages). The wait ends when
// the binding leaves ns out and, for a tenant with a class to ask for and a
// sharing taint of its own, a claim that tolerates that taint (the tenant may,
// an outsider may not) is admitted.
func waitNotOutside(t *testing.T, tenant, ns string) {
	t.Helper()
	ctx := t.Context()
	err := wait.PollUntilContextTimeout(ctx, pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		b, err := local.Client.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Get(ctx, tenancyv1.PolicyOutsiders, metav1.GetOptions{})
		if err != nil || b.Spec.MatchResources == nil || b.Spec.MatchResources.NamespaceSelector == nil {
			return false, nil
		}
		for _, r := range b.Spec.MatchResources.NamespaceSelector.MatchExpressions {
			if r.Operator == metav1.LabelSelectorOpNotIn && slices.Contains(r.Values, ns) {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("the outsiders binding does not leave out namespace %s of tenant %s within %s", ns, tenant, waitTimeout)
	}
	tn, err := getTenant(ctx, tenant)
	if err != nil {
		t.Fatal(err)
	}
	classes := tenancy.AllowedClasses(tn)
	if len(classes) == 0 || tenancy.SharingGroup(tn) != tn.Name {
		return
	}
	probe := withTolerations(builder.MakeRequest("gpu", classes[0]).Obj(), tenancy.Toleration(tn.Name))
	err = wait.PollUntilContextTimeout(ctx, pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		return createClaim(ctx, ns, claimSpec(probe)) == nil, nil
	})
	if err != nil {
		t.Fatalf("a claim of tenant %s tolerating its own sharing taint is still refused in %s after %s: %v", tenant, ns, waitTimeout, createClaim(ctx, ns, claimSpec(probe)))
	}
}

// waitEnforced waits until the API server refuses, in namespace ns, a claim
// for a class no tenant allows: the admission plugin picks up a new binding
// within about a second of its creation.
func waitEnforced(t *testing.T, ns string) {
	t.Helper()
	err := wait.PollUntilContextTimeout(t.Context(), pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		return createClaim(ctx, ns, claimSpec(builder.MakeRequest("probe", "probe.e2e.tessera.dev").Obj())) != nil, nil
	})
	if err != nil {
		t.Fatalf("no tenant policy enforced in namespace %s within %s", ns, waitTimeout)
	}
}

func labelNamespace(t *testing.T, name string, labels map[string]string) {
	t.Helper()
	ns, err := local.Client.CoreV1().Namespaces().Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ns.Labels == nil {
		ns.Labels = map[string]string{}
	}
	for k, v := range labels {
		ns.Labels[k] = v
	}
	if _, err := local.Client.CoreV1().Namespaces().Update(t.Context(), ns, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("label namespace %s: %v", name, err)
	}
}

func getTenant(ctx context.Context, name string) (*tenancyv1.GPUTenant, error) {
	tenant := &tenancyv1.GPUTenant{}
	err := tenants.Get(ctx, crclient.ObjectKey{Name: name}, tenant)
	return tenant, err
}

// waitTenant polls the tenant until ok holds, and returns it.
func waitTenant(t *testing.T, name, what string, ok func(*tenancyv1.GPUTenant) bool) *tenancyv1.GPUTenant {
	t.Helper()
	var last *tenancyv1.GPUTenant
	err := wait.PollUntilContextTimeout(t.Context(), pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		tenant, err := getTenant(ctx, name)
		if err != nil {
			return false, nil
		}
		last = tenant
		return ok(tenant), nil
	})
	if err != nil {
		t.Fatalf("GPUTenant %s: %s not reached within %s; status: %+v", name, what, waitTimeout, last)
	}
	return last
}

func waitTenantCondition(t *testing.T, name, condition string, status metav1.ConditionStatus) *tenancyv1.GPUTenant {
	t.Helper()
	return waitTenant(t, name, condition+"="+string(status), func(tenant *tenancyv1.GPUTenant) bool {
		c := meta.FindStatusCondition(tenant.Status.Conditions, condition)
		return c != nil && c.Status == status && tenant.Status.ObservedGeneration == tenant.Generation
	})
}

func waitTenantNamespaces(t *testing.T, name string, namespaces ...string) {
	t.Helper()
	waitTenant(t, name, fmt.Sprintf("namespaces include %v", namespaces), func(tenant *tenancyv1.GPUTenant) bool {
		for _, ns := range namespaces {
			found := false
			for _, have := range tenant.Status.Namespaces {
				found = found || have == ns
			}
			if !found {
				return false
			}
		}
		return true
	})
}

// claimSpec is a claim spec of the given requests.
func claimSpec(requests ...resourceapi.DeviceRequest) resourceapi.ResourceClaimSpec {
	return resourceapi.ResourceClaimSpec{Devices: resourceapi.DeviceClaim{Requests: requests}}
}

// createClaim creates a ResourceClaim and returns the API server's error.
func createClaim(ctx context.Context, ns string, spec resourceapi.ResourceClaimSpec) error {
	_, err := local.Client.ResourceV1().ResourceClaims(ns).Create(ctx, &resourceapi.ResourceClaim{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "attack-", Namespace: ns}, Spec: spec,
	}, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	return err
}

// wantRefused checks that err is the API server refusing, with a message
// containing every one of parts.
func wantRefused(t *testing.T, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("created, want it refused with a message containing %q", parts)
	}
	if !apierrors.IsForbidden(err) && !apierrors.IsInvalid(err) {
		t.Fatalf("error %v is not a refusal", err)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("refusal %q does not contain %q", err.Error(), p)
		}
	}
}

// migRequest asks for one 1g.18gb MIG partition.
func migRequest(name string) resourceapi.DeviceRequest {
	return builder.MakeRequest(name, gpuapi.ClassMIG).Profile("1g.18gb").Obj()
}

// updateTenant changes the tenant's spec, retrying when the controller has
// written its status in between.
func updateTenant(t *testing.T, name string, mutate func(*tenancyv1.GPUTenant)) {
	t.Helper()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		tenant, err := getTenant(t.Context(), name)
		if err != nil {
			return err
		}
		mutate(tenant)
		return tenants.Update(t.Context(), tenant)
	})
	if err != nil {
		t.Fatalf("update GPUTenant %s: %v", name, err)
	}
}
