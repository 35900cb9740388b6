package localcluster

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/internal/testing/builder"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

// The extended-resource share attack of TestTenancyAttackMatrix, on GPUs
// without the free taint. A share asked for through
// deviceclass.resource.kubernetes.io/<shared class> is allocated only where
// a time-shared GPU carries no sharing taint at all (attackExtendedResource
// says why). The controller takes the free taints off every GPU while a
// claim that cannot tolerate them waits (a claim made before the sharing
// policies were in place: SharingReconciler.freeGPUs), so such GPUs exist
// whenever one does; the budget must hold there too.

// freeWithdrawalWait bounds the wait for the controller to take the free
// taints off: it does so at most once a minute (freeWithdrawalInterval).
const freeWithdrawalWait = 2 * time.Minute

// withdrawFreeTaints makes a claim that tolerates no sharing taint wait in
// outside, a namespace of no tenant, as one made before the untenanted
// sharing policy was in place would: the policy is deleted, the claim made,
// the policy put back. It waits until the tenancy node's shared GPUs carry
// no sharing taint. Cleanup deletes the claim and waits until the GPUs carry
// the free taint again.
func withdrawFreeTaints(ctx context.Context, t *testing.T, outside string) {
	t.Helper()
	policies := local.Client.AdmissionregistrationV1().MutatingAdmissionPolicies()
	saved, err := policies.Get(ctx, tenancyv1.PolicySharingUntenanted, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the chart's policy %s: %v", tenancyv1.PolicySharingUntenanted, err)
	}
	if err := policies.Delete(ctx, saved.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	restored := false
	restore := func() {
		if restored {
			return
		}
		restored = true
		p := &admissionv1.MutatingAdmissionPolicy{ObjectMeta: metav1.ObjectMeta{Name: saved.Name, Labels: saved.Labels, Annotations: saved.Annotations}, Spec: saved.Spec}
		if _, err := policies.Create(context.WithoutCancel(ctx), p, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Errorf("restore policy %s: %v", saved.Name, err)
		}
	}
	t.Cleanup(restore)

	claims := local.Client.ResourceV1().ResourceClaims(outside)
	share := claimSpec(builder.MakeRequest("gpu", gpuapi.ClassShared).Obj())
	// The API server's policy plugin lets go of the policy within about a
	// second: until then the claim comes back shaped (tolerating free GPUs).
	var blocked *resourceapi.ResourceClaim
	err = wait.PollUntilContextTimeout(ctx, pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		c, err := claims.Create(ctx, &resourceapi.ResourceClaim{ObjectMeta: metav1.ObjectMeta{GenerateName: "before-policies-", Namespace: outside}, Spec: share}, metav1.CreateOptions{})
		if err != nil {
			return false, nil
		}
		if tenancy.BlockedByFreeTaint(c) {
			blocked = c
			return true, nil
		}
		return false, claims.Delete(ctx, c.Name, metav1.DeleteOptions{})
	})
	if err != nil {
		t.Fatalf("no claim without the free toleration could be made in %s with policy %s deleted: %v", outside, saved.Name, err)
	}
	t.Cleanup(func() {
		ctx := context.WithoutCancel(ctx)
		if err := claims.Delete(ctx, blocked.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("delete claim %s: %v", blocked.Name, err)
		}
		// The cases after this one find the policy in force again.
		err := wait.PollUntilContextTimeout(ctx, pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
			c, err := claims.Create(ctx, &resourceapi.ResourceClaim{ObjectMeta: metav1.ObjectMeta{GenerateName: "after-policies-", Namespace: outside}, Spec: share}, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
			return err == nil && !tenancy.BlockedByFreeTaint(c), nil
		})
		if err != nil {
			t.Errorf("policy %s restored, but claims in %s are not shaped again within %s", saved.Name, outside, waitTimeout)
		}
		for _, gpu := range tenancyGPUs() {
			waitTaintValue(ctx, t, gpu, tenancyv1.GroupFree)
		}
	})
	restore()

	var last map[string]string
	err = wait.PollUntilContextTimeout(ctx, pollEvery, freeWithdrawalWait, true, func(ctx context.Context) (bool, error) {
		var err error
		if last, err = sharingTaints(ctx); err != nil {
			return false, nil
		}
		return !slices.ContainsFunc(tenancyGPUs(), func(gpu string) bool { _, ok := last[gpu]; return ok }), nil
	})
	if err != nil {
		t.Fatalf("the tenancy node's shared GPUs keep sharing taints %v while claim %s waits: %v", last, blocked.Name, err)
	}
}

// attackExtendedSharesUntainted: while the tenancy node's time-shared GPUs
// carry no sharing taint (withdrawFreeTaints), a tenant (Exclusive, budget
// room for one GPU and not two) asks for shares through the extended
// resource of the shared class, one pod each. The first is allocated,
// admitted and runs, and its GPU gets the tenant's taint, which the
// scheduler's claims do not tolerate, so the second is allocated a share
// of the other GPU: the tenant pays each GPU it holds shares of whole, so
// it is refused OverBudget (gpuMemory) and never bound. At every poll the
// tenant's admitted claims hold one GPU at most.
func attackExtendedSharesUntainted(ctx context.Context, t *testing.T, tenant *tenancyv1.GPUTenant, ns, outside string) {
	t.Helper()
	waitTenancyGPUsFree(ctx, t)
	if tenancy.SharingGroup(tenant) != tenant.Name {
		t.Fatalf("tenant %s is not Exclusive: its second share would be priced by its fraction", tenant.Name)
	}
	withdrawFreeTaints(ctx, t, outside)

	var pods []*corev1.Pod
	t.Cleanup(func() { deletePodsAndClaims(context.WithoutCancel(ctx), t, ns, pods...) })
	first := extendedResourcePod(ctx, t, ns, "share-first", gpuapi.ClassShared)
	pods = append(pods, first)
	waitExtendedResourceRunning(t, first)
	gpus, admitted, err := admittedGPUs(ctx, ns)
	if err != nil {
		t.Fatal(err)
	}
	if admitted != 1 || len(gpus) != 1 {
		t.Fatalf("the first share: %d admitted claims holding %v, want one share", admitted, gpus)
	}
	for gpu := range gpus {
		// Until then the second could be given a share of the same GPU,
		// which the budget rightly lets it have.
		waitTaintValue(ctx, t, gpu, tenant.Name)
	}

	second := extendedResourcePod(ctx, t, ns, "share-second", gpuapi.ClassShared)
	pods = append(pods, second)
	err = wait.PollUntilContextTimeout(ctx, pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		if gpus, admitted, err = admittedGPUs(ctx, ns); err != nil {
			return false, nil
		}
		if len(gpus) > 1 {
			return false, fmt.Errorf("the tenant's admitted shares hold %d GPUs (%v) on a budget of one GPU's memory", len(gpus), gpus)
		}
		return refusedOverBudget(ctx, second, "gpuMemory")
	})
	if err != nil {
		t.Fatalf("the second share: %v (admitted %d holding %v); events: %s", err, admitted, gpus, eventSummary(second))
	}
}
