package localcluster

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/apimachinery/pkg/util/wait"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/internal/nvml/nvmlmock"
	"github.com/tessera-gpu/tessera/internal/testing/builder"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

// onGPU selects the devices of GPU index.
func onGPU(index int) string {
	return fmt.Sprintf("device.attributes[%q].%s == %d", gpuapi.DriverName, gpuapi.AttrIndex, index)
}

// kindsMemory is the memory kindsNode publishes for device.
func kindsMemory(t *testing.T, device string) int64 {
	t.Helper()
	list, err := local.Client.ResourceV1().ResourceSlices().List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m, ok := tenancy.DeviceMemory(ptrsOf(list.Items))[tenancy.DeviceID{Driver: gpuapi.DriverName, Pool: kindsNode.Name, Device: device}]
	if !ok {
		t.Fatalf("%s publishes no %s", kindsNode.Name, device)
	}
	return m
}

// TestTenancyReclaimMIGOneVictim: on GPU 0 of kindsNode (an H200: a 3g.71gb
// takes memory slices 0-3 or 4-7), borrower holds 1g.18gb partitions at
// slices 0 (the older pod) and 4 (the newer), owner one at slice 5. owner,
// below its guarantee, asks for a 3g.71gb there. Taking borrower's pods
// newest first until the pod fits would evict both: the newer frees nothing
// the pod can use while owner's own partition blocks slices 4-7. Reclaim
// evicts the older one only, and owner's pod runs.
func TestTenancyReclaimMIGOneVictim(t *testing.T) {
	needCluster(t)
	ctx := testContext(t)
	small := kindsMemory(t, gpuapi.MIGDeviceName(0, "1g.18gb", 0))
	large := kindsMemory(t, gpuapi.MIGDeviceName(0, "3g.71gb", 0))
	guarantee := resource.NewQuantity(small+large, resource.BinarySI)
	owner := newTenant(t, "mig-owner", tenancyv1.GPUTenantSpec{
		AllowedDeviceClasses: []string{gpuapi.ClassMIG},
		Budget:               &tenancyv1.Budget{GPUMemory: guarantee},
		Guarantee:            &tenancyv1.Budget{GPUMemory: guarantee},
	})
	borrower := newTenant(t, "mig-borrower", tenancyv1.GPUTenantSpec{AllowedDeviceClasses: []string{gpuapi.ClassMIG}})
	ownerNS, borrowerNS := tenantNamespace(t, owner.Name), tenantNamespace(t, borrower.Name)
	partition := func(ns, name, profile string, start int) {
		r := builder.MakeRequest("gpu", gpuapi.ClassMIG).Profile(profile).Selector(onGPU(0))
		if start >= 0 {
			r = r.PlacementStart(start)
		}
		createTemplate(t, ns, name, r.Obj())
	}
	partition(ownerNS, "at5", "1g.18gb", 5)
	partition(ownerNS, "large", "3g.71gb", -1)
	partition(borrowerNS, "at0", "1g.18gb", 0)
	partition(borrowerNS, "at4", "1g.18gb", 4)

	waitRunning(t, createPod(t, ownerNS, "own", "at5", onKindsNode("")))
	older := waitRunning(t, createPod(t, borrowerNS, "older", "at0", onKindsNode("")))
	newer := waitRunning(t, createPod(t, borrowerNS, "newer", "at4", onKindsNode("")))
	waitTenant(t, borrower.Name, "borrowing two partitions", func(g *tenancyv1.GPUTenant) bool {
		return g.Status.Borrowed.GPUMemory.Value() == 2*small
	})

	start := time.Now()
	waiting := waitRunningWithin(t, createPod(t, ownerNS, "large", "large", onKindsNode("")), reclaimBound)
	t.Logf("owner's 3g.71gb pod ran %s after it was created", time.Since(start).Round(time.Second))

	if e := events(ctx, waiting, tenancyv1.ReasonReclaiming); len(e) != 1 || !strings.Contains(e[0].Message, "evicting the pods of 1 borrowed claim(s)") {
		t.Errorf("owner's pod: want one %s event for one claim:\n%s", tenancyv1.ReasonReclaiming, eventSummary(waiting))
	}
	if len(events(ctx, older, tenancyv1.ReasonReclaimed)) == 0 {
		t.Errorf("the older borrowing pod, whose partition blocks slices 0-3, has no %s event:\n%s", tenancyv1.ReasonReclaimed, eventSummary(older))
	}
	if e := events(ctx, newer, tenancyv1.ReasonReclaimed); len(e) > 0 {
		t.Errorf("the newer borrowing pod was evicted too: %s", e[0].Message)
	}
	if got, err := local.Client.CoreV1().Pods(borrowerNS).Get(ctx, newer.Name, metav1.GetOptions{}); err != nil || got.UID != newer.UID || got.DeletionTimestamp != nil || got.Status.Phase != corev1.PodRunning {
		t.Errorf("the newer borrowing pod does not run on (err %v)", err)
	}
	a := waitAllocated(t, waiting)
	if got, want := a.Devices()[0].Device, gpuapi.MIGDeviceName(0, "3g.71gb", 0); got != want {
		t.Errorf("owner's pod got %s, want %s (the slices the older pod held)", got, want)
	}
}

// kindsPod is one pod of TestTenancyClaimKinds and what its claim's series
// must show.
type kindsPod struct {
	ns, name, template, kind string
	// utilization is its claim_gpu_utilization_ratio.
	utilization float64
	idle        bool
}

// TestTenancyClaimKinds: two tenants hold every kind of device on kindsNode:
// a holds GPU 0 whole and a 1g.18gb partition of GPU 1; b another 1g.18gb
// partition of GPU 1 and two MPS shares of GPU 2 (8Gi and 4Gi). Through the
// mock's telemetry file GPU 0 is 80 % busy, a's partition 20 %, b's 60 %,
// and GPU 2 70 %, where the mock runs two clients of the 8Gi share's MPS
// daemon (45 % and 20 % of the SMs, 1Gi and 2Gi), one of the 4Gi share's
// (10 %, 1Gi) and a process that is no share's client (30 %, 4Gi). Each
// pod's tessera_claim_gpu_utilization_ratio carries its own device's value;
// a share's is the sum of its own daemon's clients' (0.65 and 0.1), and so
// is its memory in use, beside its limit. Below the plugin's 0.5, a's
// partition and b's 4Gi share are marked idle (condition, Event,
// tessera_idle_claims); then b opts in to idle reclaim and only b's 4Gi
// share pod is evicted.
func TestTenancyClaimKinds(t *testing.T) {
	needCluster(t)
	ctx := testContext(t)
	withIdleMarking(t)
	// The controller restarted at the end must see kindsNode's GPUs with
	// nothing prepared, to learn their full device lists for reclaim.
	t.Cleanup(func() { waitCleanFrom(context.Background(), t) })
	setMockTelemetry(t, kindsNode.Name, map[int]uint32{0: 80, 2: 70})

	a := newTenant(t, "kinds-a", tenancyv1.GPUTenantSpec{AllowedDeviceClasses: []string{gpuapi.ClassGPU, gpuapi.ClassMIG}})
	b := newTenant(t, "kinds-b", tenancyv1.GPUTenantSpec{AllowedDeviceClasses: []string{gpuapi.ClassMIG, gpuapi.ClassShared}})
	nsA, nsB := tenantNamespace(t, a.Name), tenantNamespace(t, b.Name)
	const shareMemory, idleShareMemory = "8Gi", "4Gi"
	createTemplate(t, nsA, "whole", builder.MakeRequest("gpu", gpuapi.ClassGPU).Selector(onGPU(0)).Obj())
	for _, ns := range []string{nsA, nsB} {
		createTemplate(t, ns, "mig", builder.MakeRequest("gpu", gpuapi.ClassMIG).Profile("1g.18gb").Selector(onGPU(1)).Obj())
	}
	waitShapedAs(ctx, t, nsB, b)
	createTemplate(t, nsB, "share", builder.MakeRequest("gpu", gpuapi.ClassShared).Memory(shareMemory).Selector(onGPU(2)).Obj())
	createTemplate(t, nsB, "idle-share", builder.MakeRequest("gpu", gpuapi.ClassShared).Memory(idleShareMemory).Selector(onGPU(2)).Obj())

	want := []kindsPod{
		{ns: nsA, name: "whole", template: "whole", kind: "gpu", utilization: 0.8},
		{ns: nsA, name: "mig", template: "mig", kind: "mig", utilization: 0.2, idle: true},
		{ns: nsB, name: "mig", template: "mig", kind: "mig", utilization: 0.6},
		{ns: nsB, name: "share", template: "share", kind: "share", utilization: 0.45 + 0.2},
		{ns: nsB, name: "idle-share", template: "idle-share", kind: "share", utilization: 0.1, idle: true},
	}
	pods := map[string]*corev1.Pod{}
	for _, p := range want {
		pods[p.ns+"/"+p.name] = createPod(t, p.ns, p.name, p.template, onKindsNode(""))
	}
	for k, p := range pods {
		pods[k] = waitRunning(t, p)
	}

	// The MIG instances' GPU instance IDs are known once prepared: the
	// series say them.
	reader := serviceAccountToken(t, ctx, "e2e-kinds-"+rand.String(4), metricsReader)
	addr := node(t, kindsNode.Name).MetricsAddress
	instances := map[string]int{}
	err := wait.PollUntilContextTimeout(ctx, 2*time.Second, waitTimeout, true, func(context.Context) (bool, error) {
		for _, s := range seriesOf(scrapeAuthorised(t, ctx, addr, reader), "tessera_claim_gpu_memory_limit_bytes") {
			if gi, err := strconv.Atoi(s.labels["gpu_instance"]); err == nil && s.labels["type"] == "mig" {
				instances[s.labels["namespace"]] = gi
			}
		}
		return len(instances) == 2, nil
	})
	if err != nil {
		t.Fatalf("the MIG claims' GPU instances: got %v, want one in each of %s and %s", instances, nsA, nsB)
	}
	// A share's MPS daemon is named by its claim's UID.
	daemon := func(pod string) string { return string(waitAllocated(t, pods[nsB+"/"+pod]).Claim.UID) }
	const gib = 1 << 30
	shareClients := []nvmlmock.ProcessTelemetry{
		{PID: 4100, MemoryUsedBytes: 1 * gib, SMUtilizationPercent: 45, MPSDaemon: daemon("share")},
		{PID: 4101, MemoryUsedBytes: 2 * gib, SMUtilizationPercent: 20, MPSDaemon: daemon("share")},
		{PID: 4300, MemoryUsedBytes: 4 * gib, SMUtilizationPercent: 30},
	}
	idleClient := nvmlmock.ProcessTelemetry{PID: 4200, MemoryUsedBytes: 1 * gib, SMUtilizationPercent: 10, MPSDaemon: daemon("idle-share")}
	telemetry := func(gpu2 ...nvmlmock.ProcessTelemetry) nvmlmock.Telemetry {
		return nvmlmock.Telemetry{GPUs: map[int]nvmlmock.GPUTelemetry{
			1: {MIG: map[int]nvmlmock.MIGTelemetry{instances[nsA]: {UtilizationPercent: 20}, instances[nsB]: {UtilizationPercent: 60}}},
			2: {UtilizationPercent: 70, Processes: gpu2},
		}}
	}
	writeMockTelemetry(t, kindsNode.Name, telemetry(append(slices.Clone(shareClients), idleClient)...))

	// The series: each pod's own value, of its own kind.
	wantSeries := map[string]string{}
	for _, p := range want {
		wantSeries[p.ns+"/"+p.name] = p.kind + "=" + strconv.FormatFloat(p.utilization, 'g', -1, 64)
	}
	var got map[string]string
	var share map[string][]string
	err = wait.PollUntilContextTimeout(ctx, 2*time.Second, waitTimeout, true, func(context.Context) (bool, error) {
		body := scrapeAuthorised(t, ctx, addr, reader)
		got = map[string]string{}
		for _, s := range seriesOf(body, "tessera_claim_gpu_utilization_ratio") {
			if s.labels["namespace"] == nsA || s.labels["namespace"] == nsB {
				got[s.labels["namespace"]+"/"+s.labels["pod"]] = s.labels["type"] + "=" + s.value
			}
		}
		share = map[string][]string{}
		for _, name := range []string{"tessera_claim_gpu_memory_used_bytes", "tessera_claim_gpu_memory_limit_bytes"} {
			for _, s := range seriesOf(body, name) {
				if s.labels["namespace"] == nsB && strings.HasSuffix(s.labels["pod"], "share") {
					share[s.labels["pod"]] = append(share[s.labels["pod"]], name+"="+s.value)
				}
			}
		}
		return maps.Equal(wantSeries, got), nil
	})
	if err != nil {
		t.Errorf("utilization series by pod: got %v, want %v (type=utilization)", got, wantSeries)
	}
	bytesOf := func(q string) string {
		v := resource.MustParse(q)
		return strconv.FormatFloat(float64(v.Value()), 'g', -1, 64)
	}
	for pod, want := range map[string][]string{
		"share":      {"tessera_claim_gpu_memory_used_bytes=" + bytesOf("3Gi"), "tessera_claim_gpu_memory_limit_bytes=" + bytesOf(shareMemory)},
		"idle-share": {"tessera_claim_gpu_memory_used_bytes=" + bytesOf("1Gi"), "tessera_claim_gpu_memory_limit_bytes=" + bytesOf(idleShareMemory)},
	} {
		if !maps.Equal(sliceSet(want), sliceSet(share[pod])) {
			t.Errorf("the %s pod's memory series: got %v, want %v", pod, share[pod], want)
		}
	}
	t.Logf("share series with the mock's MPS clients: utilization %s and %s, memory %v", got[nsB+"/share"], got[nsB+"/idle-share"], share)

	// The marks: on exactly the claims below the threshold.
	wantMarked := map[string]bool{}
	for _, p := range want {
		if p.idle {
			wantMarked[p.ns+"/"+p.name] = true
		}
	}
	var marked map[string]bool
	err = wait.PollUntilContextTimeout(ctx, pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		marked = map[string]bool{}
		for _, ns := range []string{nsA, nsB} {
			claims, err := local.Client.ResourceV1().ResourceClaims(ns).List(ctx, metav1.ListOptions{})
			if err != nil {
				return false, nil
			}
			for _, c := range claims.Items {
				if idleMarked(c) && len(c.Status.ReservedFor) == 1 {
					marked[ns+"/"+c.Status.ReservedFor[0].Name] = true
				}
			}
		}
		return maps.Equal(wantMarked, marked), nil
	})
	if err != nil {
		t.Errorf("claims marked %s: got %v, want %v", tenancyv1.ConditionIdle, marked, wantMarked)
	}
	for _, p := range want {
		if p.idle {
			waitEvent(t, pods[p.ns+"/"+p.name], tenancyv1.ReasonIdle)
		}
	}
	if e := events(ctx, pods[nsA+"/whole"], tenancyv1.ReasonIdle); len(e) > 0 {
		t.Errorf("the busy whole GPU's pod was called idle: %s", e[0].Message)
	}
	controllerReader := serviceAccountToken(t, ctx, "e2e-kinds-c-"+rand.String(4), metricsReader)
	var counted map[string]string
	err = wait.PollUntilContextTimeout(ctx, pollEvery, waitTimeout, true, func(context.Context) (bool, error) {
		counted = map[string]string{}
		for _, s := range seriesOf(scrapeAuthorised(t, ctx, tenancyController.MetricsAddress, controllerReader), "tessera_idle_claims") {
			if s.labels["namespace"] == nsA || s.labels["namespace"] == nsB {
				counted[s.labels["tenant"]] = s.value
			}
		}
		return maps.Equal(map[string]string{a.Name: "1", b.Name: "1"}, counted), nil
	})
	if err != nil {
		t.Errorf("tessera_idle_claims by tenant: got %v, want 1 for each of %s and %s", counted, a.Name, b.Name)
	}

	// b opts in: its idle share goes, its busy partition and share stay,
	// and a's idle partition stays (a did not opt in).
	updateTenant(t, b.Name, func(g *tenancyv1.GPUTenant) {
		g.Spec.IdleReclaim = &tenancyv1.IdleReclaim{After: metav1.Duration{Duration: idleReclaimAfter}}
	})
	shared := pods[nsB+"/idle-share"]
	e := waitEvent(t, shared, tenancyv1.ReasonIdleReclaimed)
	if !strings.Contains(e.Message, "spec.idleReclaim.after "+idleReclaimAfter.String()) {
		t.Errorf("eviction event %q does not say why", e.Message)
	}
	err = wait.PollUntilContextTimeout(ctx, pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		p, err := local.Client.CoreV1().Pods(nsB).Get(ctx, shared.Name, metav1.GetOptions{})
		return err != nil || p.UID != shared.UID, nil
	})
	if err != nil {
		t.Errorf("b's idle share pod was not evicted")
	}
	// Its client ends with it, as a container's processes do.
	writeMockTelemetry(t, kindsNode.Name, telemetry(shareClients...))
	for _, k := range []string{nsA + "/whole", nsA + "/mig", nsB + "/mig", nsB + "/share"} {
		p := pods[k]
		got, err := local.Client.CoreV1().Pods(p.Namespace).Get(ctx, p.Name, metav1.GetOptions{})
		if err != nil || got.UID != p.UID || got.DeletionTimestamp != nil || got.Status.Phase != corev1.PodRunning {
			t.Errorf("pod %s was not left alone (err %v):\n%s", k, err, eventSummary(p))
		}
		if ev := events(ctx, p, tenancyv1.ReasonIdleReclaimed); len(ev) > 0 {
			t.Errorf("pod %s was reclaimed: %s", k, ev[0].Message)
		}
	}
}

// idleMarked reports whether a device of the claim carries the idle mark.
func idleMarked(c resourceapi.ResourceClaim) bool {
	for _, d := range c.Status.Devices {
		if cond := meta.FindStatusCondition(d.Conditions, tenancyv1.ConditionIdle); cond != nil && cond.Status == metav1.ConditionTrue {
			return true
		}
	}
	return false
}

func sliceSet(s []string) map[string]bool {
	out := map[string]bool{}
	for _, v := range s {
		out[v] = true
	}
	return out
}
