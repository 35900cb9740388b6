package localcluster

import (
	"context"
	"errors"
	"maps"
	"strings"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/internal/testing/builder"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

// The attacks from namespaces of no tenant, through subresources and from a
// node that TestTenancyAttackMatrix runs. Each checks that the attacker's goal is not reached, not only that a
// message appeared.

// waitDedicatedClass waits until the controller has created tenant's
// dedicated class for shipped.
func waitDedicatedClass(ctx context.Context, t *testing.T, tenant, shipped string) string {
	t.Helper()
	class := tenancyv1.DedicatedClassName(tenant, shipped)
	err := wait.PollUntilContextTimeout(ctx, pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		_, err := local.Client.ResourceV1().DeviceClasses().Get(ctx, class, metav1.GetOptions{})
		return err == nil, nil
	})
	if err != nil {
		t.Fatalf("dedicated class %s never created", class)
	}
	return class
}

// waitOutsidersEnforced waits until the API server refuses, in namespace ns,
// a dry-run claim for class: the controller binds the outsiders policy to
// the namespaces no tenant selects, and the API server picks a binding up
// within about a second.
func waitOutsidersEnforced(ctx context.Context, t *testing.T, ns, class string) {
	t.Helper()
	request := builder.MakeRequest("gpu", class).Profile("1g.18gb").Obj()
	err := wait.PollUntilContextTimeout(ctx, pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		return createClaim(ctx, ns, claimSpec(request)) != nil, nil
	})
	if err != nil {
		t.Fatalf("the dedicated class %s is not refused in namespace %s of no tenant within %s", class, ns, waitTimeout)
	}
}

// attackDedicatedFromOutside: a namespace of no tenant (outside) names
// victim's dedicated class, in a claim and in a template, for real (no dry
// run). Both are refused, and the namespace holds no claim afterwards.
func attackDedicatedFromOutside(ctx context.Context, t *testing.T, victim *tenancyv1.GPUTenant, outside string) {
	t.Helper()
	class := waitDedicatedClass(ctx, t, victim.Name, gpuapi.ClassMIG)
	waitOutsidersEnforced(ctx, t, outside, class)
	request := builder.MakeRequest("gpu", class).Profile("1g.18gb").Obj()
	_, err := local.Client.ResourceV1().ResourceClaims(outside).Create(ctx, &resourceapi.ResourceClaim{
		ObjectMeta: metav1.ObjectMeta{Name: "steal", Namespace: outside}, Spec: claimSpec(request),
	}, metav1.CreateOptions{})
	wantRefused(t, err, "request gpu", "DeviceClass "+class, "dedicated to a GPUTenant that does not select the namespace")
	_, err = local.Client.ResourceV1().ResourceClaimTemplates(outside).Create(ctx, builder.MakeClaim("steal").Namespace(outside).Request(request).Template(), metav1.CreateOptions{})
	wantRefused(t, err, "request gpu", "dedicated to a GPUTenant")
	claims, err := local.Client.ResourceV1().ResourceClaims(outside).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range claims.Items {
		t.Errorf("namespace %s of no tenant holds claim %s", outside, c.Name)
	}
}

// attackDedicatedUnbound: the same attack while the outsiders policy is
// gone (as for a claim made before it was in place): the controller refuses
// the allocation of the dedicated GPU, so the pod never binds and its claim
// is never admitted. The policy is put back after. (The policy is the
// chart's; its binding is the controller's, which would put it back.)
func attackDedicatedUnbound(ctx context.Context, t *testing.T, victim *tenancyv1.GPUTenant, outside string) {
	t.Helper()
	class := waitDedicatedClass(ctx, t, victim.Name, gpuapi.ClassMIG)
	waitOutsidersEnforced(ctx, t, outside, class)
	policies := local.Client.AdmissionregistrationV1().ValidatingAdmissionPolicies()
	saved, err := policies.Get(ctx, tenancyv1.PolicyOutsiders, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the chart's policy %s: %v", tenancyv1.PolicyOutsiders, err)
	}
	if err := policies.Delete(ctx, saved.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { restorePolicy(t, saved, outside, class) })
	request := builder.MakeRequest("gpu", class).Profile("1g.18gb").Obj()
	// The API server's policy plugin lets go of the policy within about a
	// second.
	err = wait.PollUntilContextTimeout(ctx, pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		return createClaim(ctx, outside, claimSpec(request)) == nil, nil
	})
	if err != nil {
		t.Fatalf("the dedicated class is still refused in %s with the policy deleted", outside)
	}
	createTemplate(t, outside, "steal", request)
	pod := createPod(t, outside, "steal", "steal", func(p *corev1.Pod) {
		onTenancyNodes(p)
		p.Spec.NodeSelector["kubernetes.io/hostname"] = poolNode.Name
	})
	ev := waitEvent(t, pod, tenancyv1.ReasonNotAllowed)
	if !strings.Contains(ev.Message, "dedicated to a GPUTenant") {
		t.Errorf("the controller refused with %q, want it to say the class is dedicated", ev.Message)
	}
	assertNotBoundNorAdmitted(ctx, t, pod, "the outsider's pod")
	// The scheduler would keep retrying it on the dedicated node.
	deletePod(t, pod)
}

// restorePolicy creates saved again and waits until it refuses the
// dedicated class in ns once more.
func restorePolicy(t *testing.T, saved *admissionv1.ValidatingAdmissionPolicy, ns, class string) {
	ctx := context.Background()
	p := &admissionv1.ValidatingAdmissionPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: saved.Name, Labels: saved.Labels, Annotations: saved.Annotations}, Spec: saved.Spec,
	}
	if _, err := local.Client.AdmissionregistrationV1().ValidatingAdmissionPolicies().Create(ctx, p, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Errorf("restore policy %s: %v", saved.Name, err)
		return
	}
	request := builder.MakeRequest("gpu", class).Profile("1g.18gb").Obj()
	err := wait.PollUntilContextTimeout(ctx, pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		return createClaim(ctx, ns, claimSpec(request)) != nil, nil
	})
	if err != nil {
		t.Errorf("policy %s restored, but the dedicated class is not refused again", saved.Name)
	}
}

// attackTaintFromOutside: a namespace of no tenant tolerates victim's
// sharing taint (with and without a key, or every taint), for real. Every
// claim is refused with a message that names neither victim nor a GPU, and
// the namespace holds no claim afterwards. (dedicatedTenant's class tells
// when the outsiders policy holds in the namespace.)
func attackTaintFromOutside(ctx context.Context, t *testing.T, victim, dedicatedTenant *tenancyv1.GPUTenant, outside string) {
	t.Helper()
	waitOutsidersEnforced(ctx, t, outside, waitDedicatedClass(ctx, t, dedicatedTenant.Name, gpuapi.ClassMIG))
	for name, tol := range map[string]resourceapi.DeviceToleration{
		"its taint":              tenancy.Toleration(victim.Name),
		"its taint without key":  {Operator: resourceapi.DeviceTolerationOpEqual, Value: victim.Name, Effect: resourceapi.DeviceTaintEffectNoSchedule},
		"every tenant's taint":   {Key: tenancyv1.TaintKeyTenant, Operator: resourceapi.DeviceTolerationOpExists},
		"every taint of any key": {Operator: resourceapi.DeviceTolerationOpExists},
	} {
		t.Run(name, func(t *testing.T) {
			r := withTolerations(builder.MakeRequest("gpu", gpuapi.ClassShared).Obj(), tol)
			_, err := local.Client.ResourceV1().ResourceClaims(outside).Create(ctx, &resourceapi.ResourceClaim{
				ObjectMeta: metav1.ObjectMeta{GenerateName: "attack-", Namespace: outside}, Spec: claimSpec(r),
			}, metav1.CreateOptions{})
			wantRefused(t, err, "request gpu", "tolerates a tenancy taint")
			if err != nil && (strings.Contains(err.Error(), victim.Name) || strings.Contains(err.Error(), "gpu-")) {
				t.Errorf("the refusal %q names the tenant or a GPU", err.Error())
			}
		})
	}
	claims, err := local.Client.ResourceV1().ResourceClaims(outside).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range claims.Items {
		t.Errorf("namespace %s of no tenant holds claim %s", outside, c.Name)
	}
}

// freeRules are the sharing taint rules of value GroupFree, name ->
// resourceVersion.
func freeRules(ctx context.Context) (map[string]string, error) {
	list, err := local.Client.ResourceV1().DeviceTaintRules().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, r := range list.Items {
		if r.Spec.Taint.Key == tenancyv1.TaintKeyTenant && r.Spec.Taint.Value == tenancyv1.GroupFree {
			out[r.Name] = r.ResourceVersion
		}
	}
	return out, nil
}

// errRulesChanged ends the watch of attackFreeRules when a free rule changed.
var errRulesChanged = errors.New("free rules changed")

// attackFreeRules: a namespace of no tenant creates and deletes, in a loop,
// a claim for a share that tolerates a sharing group of no tenant (which
// passes admission, and which the untenanted sharing policy leaves alone, so
// the claim does not tolerate the free taint); no pod. The free taint rules
// are not written: not during the loop, and not for several of the
// controller's reconciles after.
func attackFreeRules(ctx context.Context, t *testing.T, outside string) {
	t.Helper()
	// The tenancy node's shared GPUs are free between tests.
	for _, gpu := range tenancyGPUs() {
		waitTaintValue(ctx, t, gpu, tenancyv1.GroupFree)
	}
	before, err := freeRules(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r := withTolerations(builder.MakeRequest("gpu", gpuapi.ClassShared).Obj(), tenancy.Toleration("e2e-no-such-tenant"))
	claims := local.Client.ResourceV1().ResourceClaims(outside)
	check := func(when string) {
		t.Helper()
		now, err := freeRules(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !maps.Equal(before, now) {
			t.Fatalf("%s: free rules %v, were %v", when, now, before)
		}
	}
	for i := range 20 {
		c, err := claims.Create(ctx, &resourceapi.ResourceClaim{
			ObjectMeta: metav1.ObjectMeta{GenerateName: "churn-", Namespace: outside}, Spec: claimSpec(r),
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("claim %d refused, so this does not try the attack: %v", i, err)
		}
		if err := claims.Delete(ctx, c.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		check("during the loop")
	}
	// One claim stays, waiting, for several of the controller's reconciles
	// (it reconciles on every claim change, within a second).
	if _, err := claims.Create(ctx, &resourceapi.ResourceClaim{
		ObjectMeta: metav1.ObjectMeta{Name: "waiting", Namespace: outside}, Spec: claimSpec(r),
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = claims.Delete(context.Background(), "waiting", metav1.DeleteOptions{}) })
	var now map[string]string
	err = wait.PollUntilContextTimeout(ctx, pollEvery, 10*time.Second, true, func(ctx context.Context) (bool, error) {
		var err error
		if now, err = freeRules(ctx); err == nil && !maps.Equal(before, now) {
			return false, errRulesChanged
		}
		return false, nil
	})
	if errors.Is(err, errRulesChanged) {
		t.Fatalf("while the claim waits: free rules %v, were %v", now, before)
	}
}

// attackLabelsThroughSubresources: mallory, who may update namespaces and
// their status and finalize subresources but is no cluster admin, moves
// ns to victim and grants it DRA admin access through each subresource, for
// real. Each update is refused and the namespace's labels stay as they were.
func attackLabelsThroughSubresources(ctx context.Context, t *testing.T, mallory kubernetes.Interface, ns string, victim *tenancyv1.GPUTenant) {
	t.Helper()
	for name, update := range map[string]func(context.Context, *corev1.Namespace) error{
		"namespaces/status": func(ctx context.Context, n *corev1.Namespace) error {
			_, err := mallory.CoreV1().Namespaces().UpdateStatus(ctx, n, metav1.UpdateOptions{})
			return err
		},
		"namespaces/finalize": func(ctx context.Context, n *corev1.Namespace) error {
			_, err := mallory.CoreV1().Namespaces().Finalize(ctx, n, metav1.UpdateOptions{})
			return err
		},
	} {
		for label, value := range map[string]string{tenancyv1.LabelCapsuleTenant: victim.Name, tenancyv1.LabelAdminAccess: "true"} {
			t.Run(name+"/"+label, func(t *testing.T) {
				n, err := local.Client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
				if err != nil {
					t.Fatal(err)
				}
				was := maps.Clone(n.Labels)
				n.Labels[label] = value
				wantRefused(t, update(ctx, n), label)
				after, err := local.Client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
				if err != nil {
					t.Fatal(err)
				}
				if !maps.Equal(was, after.Labels) {
					t.Errorf("namespace %s's labels changed to %v, were %v", ns, after.Labels, was)
				}
			})
		}
	}
}

// assertNotBoundNorAdmitted fails the test if pod (who, in the message) was
// bound to a node or any claim of its namespace was admitted: the attacker's
// goal, not only the refusal's message.
func assertNotBoundNorAdmitted(ctx context.Context, t *testing.T, pod *corev1.Pod, who string) {
	t.Helper()
	got, err := local.Client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Spec.NodeName != "" {
		t.Errorf("%s was bound to %s", who, got.Spec.NodeName)
	}
	claims, err := local.Client.ResourceV1().ResourceClaims(pod.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range claims.Items {
		for _, d := range c.Status.Devices {
			if meta.IsStatusConditionTrue(d.Conditions, tenancyv1.ConditionAdmitted) {
				t.Errorf("claim %s was admitted on %s/%s", c.Name, d.Pool, d.Device)
			}
		}
	}
}
