package localcluster

import (
	"context"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/e2e/framework/kubelet"
	"github.com/tessera-gpu/tessera/internal/testing/builder"
)

// deleteProtection is the finalizer the API server puts on every claim.
const deleteProtection = "resource.kubernetes.io/delete-protection"

// TestClaimFinalizerAttack: a user with the ordinary `edit` role holds a whole
// GPU with a running pod and tries to keep it while the cluster counts it
// free, by stripping the claim's delete-protection finalizer and deleting the
// claim. The chart's claim-protection policy refuses the strip (the user may
// update the claim otherwise), so the deleted claim stays allocated until its
// pod is gone, and a pod asking for all eight GPUs of the node waits. When a
// cluster administrator forces the finalizer off anyway, the scheduler hands
// the GPU out again, and the plugin refuses to prepare it, naming the claim
// that holds it: no two claims ever hold one GPU.
func TestClaimFinalizerAttack(t *testing.T) {
	ns := newNamespace(t)
	ctx := testContext(t)
	claims := local.Client.ResourceV1().ResourceClaims(ns)
	held := builder.MakeClaim("held").Namespace(ns).Request(builder.MakeRequest("gpu", gpuapi.ClassGPU).Obj()).Obj()
	if _, err := claims.Create(ctx, held, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	holder := createPod(t, ns, "holder", "", withClaim(held.Name), onNode(nodeA))
	gpu := waitAllocatedClaim(t, holder, held.Name).Status.Allocation.Devices.Results[0].Device
	waitRunning(t, holder)

	editor := editorIn(t, ctx, ns)
	ec := editor.ResourceV1().ResourceClaims(ns)
	// The editor may update the claim: labels go through.
	c, err := ec.Get(ctx, held.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c.Labels = map[string]string{"e2e.tessera.dev/touched": "true"}
	if c, err = ec.Update(ctx, c, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("an editor's label update of an allocated claim: %v", err)
	}
	// But not strip the finalizer.
	c.Finalizers = slices.DeleteFunc(c.Finalizers, func(f string) bool { return f == deleteProtection })
	if _, err := ec.Update(ctx, c, metav1.UpdateOptions{}); err == nil || !strings.Contains(err.Error(), deleteProtection) {
		t.Fatalf("an editor stripped the finalizer of an allocated claim (err %v), want the claim-protection policy's refusal", err)
	}
	if err := ec.Delete(ctx, held.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("an editor's delete of the claim: %v", err)
	}
	c, err = claims.Get(ctx, held.Name, metav1.GetOptions{})
	if err != nil || c.DeletionTimestamp == nil || c.Status.Allocation == nil || !slices.Contains(c.Finalizers, deleteProtection) {
		t.Fatalf("deleted claim whose pod runs: %v, want it kept, allocated and protected until the pod is gone", err)
	}

	// The attacker's goal: the held GPU counted free. It is not: eight GPUs
	// of node A do not fit while the claim holds one.
	createTemplate(t, ns, "eight", builder.MakeRequest("gpu", gpuapi.ClassGPU).Count(8).Obj())
	eight := createPod(t, ns, "eight", "eight", onNode(nodeA))
	waitEvent(t, eight, "FailedScheduling")

	// A cluster administrator may force the finalizer off (system:masters
	// is exempt): the claim goes while its pod runs, and the scheduler
	// allocates its GPU to the waiting pod. The plugin refuses that prepare.
	c.Finalizers = slices.DeleteFunc(c.Finalizers, func(f string) bool { return f == deleteProtection })
	if _, err := claims.Update(ctx, c, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("an administrator's forced removal of the finalizer: %v", err)
	}
	b := waitAllocated(t, eight)
	if !slices.ContainsFunc(b.Devices(), func(r resourceapi.DeviceRequestAllocationResult) bool { return r.Device == gpu }) {
		t.Fatalf("the eight-GPU claim got %v, without %s", b.Devices(), gpu)
	}
	ev := waitEvent(t, eight, kubelet.ReasonFailedPrepare)
	if want := ns + "/" + held.Name; !strings.Contains(ev.Message, want) || !strings.Contains(ev.Message, gpu) {
		t.Errorf("prepare of a GPU the deleted claim's pod still uses: %q, want a refusal naming %s and %s", ev.Message, gpu, want)
	}
	if p, err := local.Client.CoreV1().Pods(ns).Get(ctx, eight.Name, metav1.GetOptions{}); err != nil || p.Status.Phase == corev1.PodRunning {
		t.Errorf("the eight-GPU pod runs (%v) on a GPU another pod holds", err)
	}
}

// withClaim makes the pod's claim the existing claim named claim instead of
// one made from a template.
func withClaim(claim string) podOption {
	return func(p *corev1.Pod) {
		p.Spec.ResourceClaims[0] = corev1.PodResourceClaim{Name: "gpu", ResourceClaimName: &claim}
	}
}

// editorIn returns a client of a user bound to the cluster's `edit` role in
// ns only, as a tenant's developers usually are.
func editorIn(t *testing.T, ctx context.Context, ns string) kubernetes.Interface {
	t.Helper()
	const user = "e2e-editor"
	binding := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: user, Namespace: ns},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "edit"},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: user}},
	}
	if _, err := local.Client.RbacV1().RoleBindings(ns).Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	cfg := rest.CopyConfig(local.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: user}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// RBAC is cached by the authorizer; wait until the binding takes effect.
	err = wait.PollUntilContextTimeout(ctx, pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		_, err := client.ResourceV1().ResourceClaims(ns).List(ctx, metav1.ListOptions{Limit: 1})
		return err == nil, nil
	})
	if err != nil {
		t.Fatalf("the edit role of %s never took effect for %s", ns, user)
	}
	return client
}
