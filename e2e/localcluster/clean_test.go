package localcluster

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
)

// cleanFor is the top-level test that last found the cluster clean.
var cleanFor string

// startClean makes each test start from a state it checks: the first time a
// top-level test asks for a namespace, it waits until the cluster holds
// nothing of the tests before it (waitClean). Later namespaces of the same
// test (and its subtests) do not wait, as the test's own pods may run by then.
func startClean(t *testing.T) {
	t.Helper()
	top, _, _ := strings.Cut(t.Name(), "/")
	if top == cleanFor {
		return
	}
	waitClean(t)
	cleanFor = top
}

// waitClean waits until no pod of a test is bound to a node, no claim is
// allocated, no scheduler runs a binding cycle, and every node's pool is
// complete and publishes every device (nothing prepared is left to withdraw
// anything). Tests end by deleting
// their pods and claims (clustertest.Namespace), but a plugin republishes
// what an unprepare brings back after the kubelet's call returns, so the next
// test may start before the slices show it.
func waitClean(t *testing.T) {
	t.Helper()
	waitCleanFrom(t.Context(), t)
}

// waitCleanFrom is waitClean for a test's cleanup, where t.Context() has
// ended: ctx bounds the wait instead.
func waitCleanFrom(ctx context.Context, t *testing.T) {
	t.Helper()
	var why string
	// Each look costs three lists; the suite's client allows a few per second.
	err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, waitTimeout, true, func(ctx context.Context) (bool, error) {
		r := notClean(ctx)
		if ctx.Err() == nil { // a look cut short by the deadline says nothing new
			why = r
		}
		return r == "", nil
	})
	if err != nil {
		t.Fatalf("the cluster was not clean within %s after the tests before: %s", waitTimeout, why)
	}
}

// notClean says what keeps the cluster from the state every test starts
// from, or "" when nothing does. The chart's own pods (the controller's
// Deployment, the plugin's DaemonSet) stay on the nodes throughout.
func notClean(ctx context.Context) string {
	pods, err := local.Client.CoreV1().Pods(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err.Error()
	}
	for _, p := range pods.Items {
		if strings.HasPrefix(p.Namespace, testNamespacePrefix) && p.Spec.NodeName != "" && p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
			return fmt.Sprintf("pod %s/%s is still on node %s", p.Namespace, p.Name, p.Spec.NodeName)
		}
	}
	claims, err := local.Client.ResourceV1().ResourceClaims(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err.Error()
	}
	for _, c := range claims.Items {
		if c.Status.Allocation != nil {
			return fmt.Sprintf("claim %s/%s is still allocated", c.Namespace, c.Name)
		}
	}
	if why := bindingCycles(ctx); why != "" {
		return why
	}
	slices, err := local.Client.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{FieldSelector: "spec.driver=" + gpuapi.DriverName})
	if err != nil {
		return err.Error()
	}
	for _, n := range local.Nodes {
		var gpus int
		if _, err := fmt.Sscanf(n.Options().NVML, "mock:dgxh200:%d", &gpus); err != nil {
			return fmt.Sprintf("node %s: NVML %q is not an H200 mock the suite counts devices of", n.Name, n.Options().NVML)
		}
		var generation, want, have int64
		devices := 0
		for _, s := range slices.Items {
			if s.Spec.Pool.Name == n.Name && s.Spec.Pool.Generation > generation {
				generation, want = s.Spec.Pool.Generation, s.Spec.Pool.ResourceSliceCount
			}
		}
		for _, s := range slices.Items {
			if s.Spec.Pool.Name == n.Name && s.Spec.Pool.Generation == generation {
				have++
				devices += len(s.Spec.Devices)
			}
		}
		if have == 0 || have != want {
			return fmt.Sprintf("the pool of node %s is incomplete: %d of %d slices of generation %d", n.Name, have, want, generation)
		}
		if devices != gpus*devicesPerH200 {
			return fmt.Sprintf("node %s publishes %d devices, %d with nothing prepared", n.Name, devices, gpus*devicesPerH200)
		}
	}
	return ""
}

// bindingCycles says which scheduler still runs a binding cycle, "" when none
// does. A pod whose claim waits for its binding conditions sits in PreBind,
// polling every 5 s, with its allocation in flight inside the scheduler: after
// its test has deleted the pod and the claim (so the API shows nothing), the
// scheduler still counts those devices as taken until the poll finds the
// claim gone. A pod of the next test tried meanwhile is turned away ("cannot
// allocate all claims") and, since the end of that binding cycle is no event
// the scheduler's queue reacts to, waits up to five minutes for the next
// flush of unschedulable pods.
func bindingCycles(ctx context.Context) string {
	schedulers := map[string]string{"kube-scheduler": local.SchedulerURL}
	if local.TesseraSchedulerURL != "" {
		schedulers["tessera-scheduler"] = local.TesseraSchedulerURL
	}
	for name, url := range schedulers {
		var running float64
		err := componentMetrics(ctx, url, func(line string) {
			if v, ok := strings.CutPrefix(line, `scheduler_goroutines{operation="binding"} `); ok {
				running, _ = strconv.ParseFloat(strings.TrimSpace(v), 64)
			}
		})
		if err != nil {
			return err.Error()
		}
		if running > 0 {
			return fmt.Sprintf("%s still runs %.0f binding cycles", name, running)
		}
	}
	return ""
}
