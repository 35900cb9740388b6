package localcluster

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/apimachinery/pkg/util/wait"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/internal/testing/builder"
)

// Idle marking in the local cluster: the tenancy node's plugin reports a
// claim idle below idleThreshold (tenancyNode's --idle-threshold), and the
// controller, restarted by the test with these flags, marks it after
// idleAfter and reclaims an opted-in tenant's after idleReclaimAfter.
const (
	idleAfter        = 4 * time.Second
	idleSyncInterval = time.Second
	idleReclaimAfter = 6 * time.Second
)

// TestIdleClaimsMarkedAndReclaimedOnlyByOptIn: two tenants each hold a whole
// GPU of the tenancy node, both set to 10 % busy (below the plugin's 0.5
// threshold) through the mock's telemetry file. The claim of the tenant
// that did not opt in gets the idle condition in its status.devices, an
// Idle Event on its pod and a tessera_idle_claims series, and keeps its pod.
// The tenant that opted in (spec.idleReclaim.after) gets its pod evicted,
// with an IdleReclaimed Event saying why. The kept claim was prepared
// before the reclaimed one, so when the reclaim happens it has been idle at
// least as long: left alone past the threshold.
func TestIdleClaimsMarkedAndReclaimedOnlyByOptIn(t *testing.T) {
	needCluster(t)
	ctx := testContext(t)
	withIdleMarking(t)
	setMockTelemetry(t, tenancyNode.Name, map[int]uint32{0: 10, 1: 10})

	podOf := func(prefix string, spec tenancyv1.GPUTenantSpec) *corev1.Pod {
		spec.AllowedDeviceClasses = []string{gpuapi.ClassGPU}
		tenant := newTenant(t, prefix, spec)
		ns := tenantNamespace(t, tenant.Name)
		createTemplate(t, ns, "gpu", builder.MakeRequest("gpu", gpuapi.ClassGPU).Obj())
		return waitRunning(t, createPod(t, ns, "idle", "gpu", onTenancyNodes))
	}
	kept := podOf("idle-keep", tenancyv1.GPUTenantSpec{})
	reclaimed := podOf("idle-reclaim", tenancyv1.GPUTenantSpec{IdleReclaim: &tenancyv1.IdleReclaim{After: metav1.Duration{Duration: idleReclaimAfter}}})

	// The mark: a condition on the claim's device, an Event on its pod, a
	// series of the idle metric.
	var marked []string
	err := wait.PollUntilContextTimeout(ctx, pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		claims, err := local.Client.ResourceV1().ResourceClaims(kept.Namespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		marked = nil
		for _, c := range claims.Items {
			for _, d := range c.Status.Devices {
				if cond := meta.FindStatusCondition(d.Conditions, tenancyv1.ConditionIdle); cond != nil && cond.Status == metav1.ConditionTrue && cond.Reason == tenancyv1.ReasonIdle {
					marked = append(marked, c.Name+"/"+d.Device)
				}
			}
		}
		return len(marked) == 1, nil
	})
	if err != nil {
		t.Errorf("the kept claim's device has no %s condition (marked: %v)", tenancyv1.ConditionIdle, marked)
	}
	if e := waitEvent(t, kept, tenancyv1.ReasonIdle); !strings.Contains(e.Message, "below the idle utilization threshold since") {
		t.Errorf("idle event %q does not say since when", e.Message)
	}
	reader := serviceAccountToken(t, ctx, "e2e-idle-"+rand.String(4), metricsReader)
	var counted []series
	err = wait.PollUntilContextTimeout(ctx, pollEvery, waitTimeout, true, func(context.Context) (bool, error) {
		counted = nil
		for _, s := range seriesOf(scrapeAuthorised(t, ctx, tenancyController.MetricsAddress, reader), "tessera_idle_claims") {
			if s.labels["namespace"] == kept.Namespace {
				counted = append(counted, s)
			}
		}
		return len(counted) == 1 && counted[0].value == "1" && strings.HasPrefix(counted[0].labels["tenant"], "idle-keep"), nil
	})
	if err != nil {
		t.Errorf("tessera_idle_claims of %s: got %v, want one series of 1 labelled with its tenant", kept.Namespace, counted)
	}

	// The reclaim, of the opted-in tenant's pod only.
	e := waitEvent(t, reclaimed, tenancyv1.ReasonIdleReclaimed)
	if !strings.Contains(e.Message, "idle since") || !strings.Contains(e.Message, "spec.idleReclaim.after "+idleReclaimAfter.String()) {
		t.Errorf("eviction event %q does not say why", e.Message)
	}
	err = wait.PollUntilContextTimeout(ctx, pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		_, err := local.Client.CoreV1().Pods(reclaimed.Namespace).Get(ctx, reclaimed.Name, metav1.GetOptions{})
		return err != nil, nil
	})
	if err != nil {
		t.Errorf("the opted-in tenant's idle pod %s/%s was not evicted", reclaimed.Namespace, reclaimed.Name)
	}
	got, err := local.Client.CoreV1().Pods(kept.Namespace).Get(ctx, kept.Name, metav1.GetOptions{})
	if err != nil || got.DeletionTimestamp != nil || got.Status.Phase != corev1.PodRunning {
		t.Errorf("the idle pod of the tenant that did not opt in was not left alone (err %v):\n%s", err, eventSummary(kept))
	}
	if ev := events(ctx, kept, tenancyv1.ReasonIdleReclaimed); len(ev) > 0 {
		t.Errorf("the tenant that did not opt in had its pod evicted: %s", ev[0].Message)
	}
}

// withIdleMarking restarts the controller marking idle claims after
// idleAfter, and again without when the test ends.
func withIdleMarking(t *testing.T) {
	t.Helper()
	if err := tenancyController.Restart(t.Context(), "--idle-after="+idleAfter.String(), "--idle-sync-interval="+idleSyncInterval.String()); err != nil {
		t.Fatalf("restart the controller with idle marking: %v", err)
	}
	t.Cleanup(func() {
		if err := tenancyController.Restart(context.Background()); err != nil {
			t.Errorf("restart the controller without idle marking: %v", err)
		}
	})
}
