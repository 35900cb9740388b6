package localcluster

import (
	"context"
	"debug/buildinfo"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/e2e/framework/cluster"
	"github.com/tessera-gpu/tessera/e2e/framework/clustertest"
	"github.com/tessera-gpu/tessera/internal/testing/builder"
	"github.com/tessera-gpu/tessera/research/sim"
)

// TestTesseraSchedulerKeepsGPUsWhole places eight half-GPU shares and then a
// pod asking for eight whole GPUs on the two 8-GPU nodes. The stock
// kube-scheduler spreads the shares over both nodes (LeastAllocated on CPU;
// DRA devices enter no score), so neither node keeps eight idle GPUs and the
// 8-GPU pod stays pending. tessera-scheduler packs the shares onto one node
// and the 8-GPU pod fits on the other.
func TestTesseraSchedulerKeepsGPUsWhole(t *testing.T) {
	needCluster(t)
	if os.Getenv(cluster.TesseraSchedulerEnv) == "" {
		t.Skipf("tessera-scheduler not running: set %s (make e2e does)", cluster.TesseraSchedulerEnv)
	}
	for _, tc := range []struct {
		scheduler  string
		eightFits  bool
		shareNodes int
	}{
		{scheduler: corev1.DefaultSchedulerName, eightFits: false, shareNodes: 2},
		{scheduler: cluster.TesseraSchedulerName, eightFits: true, shareNodes: 1},
	} {
		t.Run(tc.scheduler, func(t *testing.T) {
			waitIdle(t, nodeA, nodeB)
			ns := newNamespace(t)
			createTemplate(t, ns, "half", builder.MakeRequest("share", gpuapi.ClassShared).Compute(50).Memory("10Gi").Obj())
			createTemplate(t, ns, "eight", builder.MakeRequest("gpus", gpuapi.ClassGPU).Count(8).Obj())
			nodes := map[string]int{}
			// One at a time, so that each pod sees where the previous went.
			for i := range 8 {
				pod := createPod(t, ns, fmt.Sprintf("half-%d", i), "half", scheduledBy(tc.scheduler), withCPU("4"))
				nodes[waitAllocated(t, pod).Pod.Spec.NodeName]++
			}
			t.Logf("%s put the shares on %v", tc.scheduler, nodes)
			if len(nodes) != tc.shareNodes {
				t.Errorf("shares on %d nodes, want %d", len(nodes), tc.shareNodes)
			}
			eight := createPod(t, ns, "eight", "eight", scheduledBy(tc.scheduler), withCPU("4"))
			if tc.eightFits {
				a := waitAllocated(t, eight)
				if nodes[a.Pod.Spec.NodeName] != 0 {
					t.Errorf("8-GPU pod on %s, which holds shares", a.Pod.Spec.NodeName)
				}
				return
			}
			ev := waitEvent(t, eight, "FailedScheduling")
			t.Logf("8-GPU pod pending under %s: %s", tc.scheduler, ev.Message)
		})
	}
}

// TestTesseraSchedulerCarriesIndexedAllocator: the tessera-scheduler the
// suite runs (TestTesseraSchedulerKeepsGPUsWhole places shares with it) is
// built on the patched allocator (shares walk indexed, node cache, the MIG
// placement choice registered), as docs/design.md allows it and only it: its
// build replaces the pinned allocator module with a copy that
// research/patches/allocator's patches were applied to.
func TestTesseraSchedulerCarriesIndexedAllocator(t *testing.T) {
	bin := os.Getenv(cluster.TesseraSchedulerEnv)
	if bin == "" {
		t.Skipf("tessera-scheduler not running: set %s (make e2e does)", cluster.TesseraSchedulerEnv)
	}
	info, err := buildinfo.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range info.Deps {
		if d.Path != "k8s.io/dynamic-resource-allocation" {
			continue
		}
		// A directory replacement has a path for a name; the version pin of
		// research/cmd/tessera-scheduler/go.mod is a module replacement.
		if d.Replace == nil || !filepath.IsAbs(d.Replace.Path) {
			t.Fatalf("%s is built on %s %s as pinned, not the patched copy (make tessera-scheduler)", bin, d.Path, d.Version)
		}
		src, err := os.ReadFile(filepath.Join(d.Replace.Path, "structured", "internal", "incubating", "allocator_incubating.go"))
		if err != nil {
			t.Fatal(err)
		}
		for patch, mark := range map[string]string{"indexed-shares": "func sharedDeviceIndex(", "node-cache": "func wholePoolsOnNode(", "placement-choice": "func devicesToTry("} {
			if !strings.Contains(string(src), mark) {
				t.Errorf("%s replaces the allocator with %s, which lacks the %s patch", bin, d.Replace.Path, patch)
			}
		}
		// The MIG placement choice is registered only in a build with the tag
		// (research/cmd/tessera-scheduler/placement_choice.go).
		tagged := false
		for _, s := range info.Settings {
			tagged = tagged || s.Key == "-tags" && slices.Contains(strings.Split(s.Value, ","), "patched_allocator")
		}
		if !tagged {
			t.Errorf("%s was built without -tags patched_allocator: it does not choose among MIG placements", bin)
		}
		return
	}
	t.Fatalf("%s has no k8s.io/dynamic-resource-allocation in its build", bin)
}

// TestTesseraSchedulerCarriesClaimWatch: the tessera-scheduler the suite runs
// is built on a copy of k8s.io/kubernetes whose DynamicResources plugin waits
// on the claim in PreBind instead of polling it every 5 s
// (research/patches/scheduler/claim-watch.patch), which BenchmarkTenancyBindingLatency
// measures.
func TestTesseraSchedulerCarriesClaimWatch(t *testing.T) {
	bin := os.Getenv(cluster.TesseraSchedulerEnv)
	if bin == "" {
		t.Skipf("tessera-scheduler not running: set %s (make e2e does)", cluster.TesseraSchedulerEnv)
	}
	info, err := buildinfo.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range info.Deps {
		if d.Path != "k8s.io/kubernetes" {
			continue
		}
		if d.Replace == nil || !filepath.IsAbs(d.Replace.Path) {
			t.Fatalf("%s is built on %s %s as pinned, not the patched copy (make tessera-scheduler)", bin, d.Path, d.Version)
		}
		src, err := os.ReadFile(filepath.Join(d.Replace.Path, "pkg", "scheduler", "framework", "plugins", "dynamicresources", "dynamicresources.go"))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(src), "err = pl.waitForBinding(ctx, state)") {
			t.Errorf("%s replaces k8s.io/kubernetes with %s, which lacks claim-watch.patch", bin, d.Replace.Path)
		}
		return
	}
	t.Fatalf("%s has no k8s.io/kubernetes in its build", bin)
}

func scheduledBy(name string) podOption {
	return func(p *corev1.Pod) { p.Spec.SchedulerName = name }
}

func withCPU(cpu string) podOption {
	return func(p *corev1.Pod) {
		p.Spec.Containers[0].Resources.Requests = corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(cpu)}
	}
}

// TestStockModelMatchesKubeScheduler checks tessera-sim's model of the stock
// kube-scheduler against the real one: pods drawn from the openb trace go to
// the cluster's two 8-GPU nodes one by one, and for each the node the real
// scheduler chose must be one the model rates highest (ties are random in
// both), a pod the model finds no room for must stay pending, and the GPUs
// the real allocator chose must be the ones the simulator's allocator
// chooses on the same node.
func TestStockModelMatchesKubeScheduler(t *testing.T) {
	needCluster(t)
	dir := clustertest.EnvOr("TESSERA_OPENB_DIR", filepath.Join("..", "..", "..", "shared", "data"))
	f, err := os.Open(filepath.Join(dir, "openb_pod_list_default.csv"))
	if err != nil {
		t.Skipf("openb trace not available (set TESSERA_OPENB_DIR): %v", err)
	}
	defer func() { _ = f.Close() }() // read only: a failed close loses nothing
	trace, err := sim.ReadPods(f)
	if err != nil {
		t.Fatal(err)
	}
	waitIdle(t, nodeA, nodeB)
	ns := newNamespace(t)
	nodes := []sim.NodeSpec{
		{Name: nodeA, CPU: 64000, Memory: 1 << 20, GPUs: 8, Model: "H200"},
		{Name: nodeB, CPU: 64000, Memory: 1 << 20, GPUs: 8, Model: "H200"},
	}
	mirror, err := sim.NewMirror(nodes, trace)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(2026, 14))
	agreed, pending := 0, 0
	const pods = 30
	for i := range pods {
		p := trace[rng.IntN(len(trace))]
		best := mirror.Best(p)
		pod := createTracePod(t, ns, fmt.Sprintf("trace-%02d", i), p, mirror)
		if len(best) == 0 {
			waitEvent(t, pod, "FailedScheduling")
			deletePod(t, pod)
			pending++
			continue
		}
		node, devices := waitBound(t, pod)
		if !slices.Contains(best, node) {
			t.Errorf("pod %d (%s, %+v): kube-scheduler chose %s, the model %v", i, p.Name, p.Request, node, best)
			continue
		}
		gpus, err := mirror.Record(t.Context(), node, p)
		if err != nil {
			t.Fatal(err)
		}
		var allocated []int
		for _, d := range devices {
			var g int
			if _, err := fmt.Sscanf(d, "gpu-%d", &g); err != nil {
				t.Fatalf("device %s: %v", d, err)
			}
			allocated = append(allocated, g)
		}
		if p.Request.GPUs > 0 && !slices.Equal(gpus, allocated) {
			t.Errorf("pod %d (%s) on %s: kube-scheduler's allocator took GPUs %v, the simulator's %v", i, p.Name, node, allocated, gpus)
			continue
		}
		agreed++
	}
	t.Logf("model agreed with kube-scheduler on %d of %d pods placed; %d pods pending in both", agreed, pods-pending, pending)
}

// createTracePod creates a pod with the trace pod's CPU and memory requests
// and, when it asks for GPUs, a ResourceClaim as the simulator builds it.
func createTracePod(t *testing.T, ns, name string, p sim.Pod, mirror *sim.Mirror) *corev1.Pod {
	t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{{
				Name: "ctr", Image: "registry.k8s.io/pause:3.10",
				Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
					corev1.ResourceCPU:    *resource.NewMilliQuantity(p.Request.CPU, resource.DecimalSI),
					corev1.ResourceMemory: *resource.NewQuantity(p.Request.Memory<<20, resource.BinarySI),
				}},
			}},
			TerminationGracePeriodSeconds: new(int64(5)),
		},
	}
	if p.Request.GPUs > 0 {
		claim := &resourceapi.ResourceClaim{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: mirror.ClaimSpec(p)}
		if _, err := local.Client.ResourceV1().ResourceClaims(ns).Create(t.Context(), claim, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create claim %s: %v", name, err)
		}
		pod.Spec.ResourceClaims = []corev1.PodResourceClaim{{Name: "gpu", ResourceClaimName: &claim.Name}}
		pod.Spec.Containers[0].Resources.Claims = []corev1.ResourceClaim{{Name: "gpu"}}
	}
	created, err := local.Client.CoreV1().Pods(ns).Create(t.Context(), pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod %s: %v", name, err)
	}
	return created
}

// waitBound waits until the pod is bound and, if it has a claim, the claim
// allocated; it returns the node and the allocated device names.
func waitBound(t *testing.T, pod *corev1.Pod) (string, []string) {
	t.Helper()
	if len(pod.Spec.ResourceClaims) > 0 {
		a := waitAllocatedClaim(t, pod, *pod.Spec.ResourceClaims[0].ResourceClaimName)
		var devices []string
		for _, d := range a.Status.Allocation.Devices.Results {
			devices = append(devices, d.Device)
		}
		p, err := local.Client.CoreV1().Pods(pod.Namespace).Get(t.Context(), pod.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return p.Spec.NodeName, devices
	}
	var node string
	err := wait.PollUntilContextTimeout(t.Context(), pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		p, err := local.Client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		node = p.Spec.NodeName
		return node != "", nil
	})
	if err != nil {
		t.Fatalf("pod %s/%s not bound within %s: %v; events: %s", pod.Namespace, pod.Name, waitTimeout, err, eventSummary(pod))
	}
	return node, nil
}

func waitAllocatedClaim(t *testing.T, pod *corev1.Pod, claim string) *resourceapi.ResourceClaim {
	t.Helper()
	var out *resourceapi.ResourceClaim
	err := wait.PollUntilContextTimeout(t.Context(), pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		p, err := local.Client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil || p.Spec.NodeName == "" {
			return false, nil
		}
		c, err := local.Client.ResourceV1().ResourceClaims(pod.Namespace).Get(ctx, claim, metav1.GetOptions{})
		if err != nil || c.Status.Allocation == nil {
			return false, nil
		}
		out = c
		return true, nil
	})
	if err != nil {
		t.Fatalf("pod %s/%s not scheduled with claim %s allocated within %s: %v; events: %s", pod.Namespace, pod.Name, claim, waitTimeout, err, eventSummary(pod))
	}
	return out
}

// TestTesseraSchedulerChoosesMIGPlacement: on a node whose GPU 1 holds a 3g
// partition at memory slice 4 and whose other GPUs are empty, a 1g partition
// goes where each scheduler's allocator puts it. kube-scheduler's takes the
// first free placement in published order, on the empty GPU 0; tessera-
// scheduler's fills GPU 1, keeping GPU 0 whole: its Filter ranks the node's
// free placements (partition.BestFit, research/patches/allocator/placement-choice.patch),
// and its Reserve allocates once more on the chosen node with the final
// choice, which plays futures drawn from the demand from what each placement
// leaves (research/patches/scheduler/final-choice.patch). Which of GPU 1's
// four free slices it takes is the futures' to decide, so the test asks for
// GPU 1. Both weigh by the demand tessera-scheduler has seen in this run.
// For Filter's ranking, of the 512 weightings of the nine classes at 0 or 1,
// those that fill GPU 0 are exactly the 64 that weigh whole GPUs, shares and
// 7g partitions all 0, which takes about a hundred requests of other classes
// and none of those: the suite asks for whole GPUs and shares throughout.
// The final choice's futures draw those whole GPUs and shares, which only
// an uncut GPU 0 can still take; run alone, the test's own 3g and 1g
// requests make a 1g partition on GPU 0 strand its slice 7.
func TestTesseraSchedulerChoosesMIGPlacement(t *testing.T) {
	needCluster(t)
	if os.Getenv(cluster.TesseraSchedulerEnv) == "" {
		t.Skipf("tessera-scheduler not running: set %s (make e2e does)", cluster.TesseraSchedulerEnv)
	}
	for _, tc := range []struct{ scheduler, want string }{
		{corev1.DefaultSchedulerName, "gpu-0-mig-1g18gb-6"},
		{cluster.TesseraSchedulerName, "gpu-1-mig-1g18gb-"},
	} {
		t.Run(tc.scheduler, func(t *testing.T) {
			waitIdle(t, nodeA)
			ns := newNamespace(t)
			createTemplate(t, ns, "three", builder.MakeRequest("mig", gpuapi.ClassMIG).Profile("3g.71gb").PlacementStart(4).
				Selector(fmt.Sprintf(`device.attributes[%q].%s == 1`, gpuapi.DriverName, gpuapi.AttrIndex)).Obj())
			createTemplate(t, ns, "one", builder.MakeRequest("mig", gpuapi.ClassMIG).Profile("1g.18gb").Obj())
			three := waitAllocated(t, createPod(t, ns, "three", "three", scheduledBy(tc.scheduler), onNode(nodeA)))
			if got := three.Devices()[0].Device; got != "gpu-1-mig-3g71gb-4" {
				t.Fatalf("3g partition on %s, want gpu-1-mig-3g71gb-4", got)
			}
			one := waitAllocated(t, createPod(t, ns, "one", "one", scheduledBy(tc.scheduler), onNode(nodeA)))
			if got := one.Devices()[0].Device; !strings.HasPrefix(got, tc.want) {
				t.Errorf("%s put the 1g partition on %s, want %s…", tc.scheduler, got, tc.want)
			}
			for _, a := range []allocation{one, three} {
				deletePod(t, a.Pod)
				waitGone(t, a)
			}
			if tc.scheduler == cluster.TesseraSchedulerName {
				checkDemandMetrics(t)
			}
		})
	}
}

// checkDemandMetrics reads tessera-scheduler's demand weights from its
// /metrics, after it has scheduled at least these MIG pods: the weights have
// moved from version 0 (every class 1), the class most asked for weighs 1,
// and every weight is a multiple of 1/16 between 0 and 1; the shares the
// final choice draws from sum to 1; and the final choice ran in Reserve (at
// least once, and it moved no more partitions than it chose). Which classes
// the run has asked for most depends on the tests before, so no class's
// weight is asserted.
func checkDemandMetrics(t *testing.T) {
	t.Helper()
	version, unasked, made, moved := -1.0, -1.0, -1.0, -1.0
	weights := map[string]float64{}
	shares := 0.0
	err := componentMetrics(t.Context(), local.TesseraSchedulerURL, func(line string) {
		name, value, ok := strings.Cut(line, " ")
		if !ok || strings.HasPrefix(line, "#") {
			return
		}
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			return
		}
		switch {
		case name == "tessera_scheduler_demand_weights_version":
			version = v
		case name == "tessera_scheduler_demand_unasked_weight":
			unasked = v
		case strings.HasPrefix(name, `tessera_scheduler_demand_weight{class="`):
			weights[strings.TrimSuffix(strings.TrimPrefix(name, `tessera_scheduler_demand_weight{class="`), `"}`)] = v
		case strings.HasPrefix(name, `tessera_scheduler_demand_share{class="`):
			shares += v
		case name == "tessera_scheduler_final_choices_total":
			made = v
		case name == "tessera_scheduler_final_choices_moved_total":
			moved = v
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("demand weights: version %v, %v, classes not asked for %v; final choices %v, %v of them moved", version, weights, unasked, made, moved)
	if made < 1 || moved < 0 || moved > made {
		t.Errorf("tessera_scheduler_final_choices_total %v, _moved_total %v: want at least one final choice in Reserve, and no more moved than made", made, moved)
	}
	if math.Abs(shares-1) > 1e-6 {
		t.Errorf("tessera_scheduler_demand_share sums to %v, want 1", shares)
	}
	if version < 1 {
		t.Errorf("tessera_scheduler_demand_weights_version is %v after MIG pods were scheduled, want 1 or more", version)
	}
	if unasked < 0 || unasked > 1 {
		t.Errorf("tessera_scheduler_demand_unasked_weight is %v, want a weight in [0, 1]", unasked)
	}
	most := 0.0
	for class, w := range weights {
		if w < 0 || w > 1 || w*16 != math.Round(w*16) {
			t.Errorf("class %s weighs %v, want a multiple of 1/16 in [0, 1]", class, w)
		}
		most = max(most, w)
	}
	if most != 1 {
		t.Errorf("no class weighs 1 (%v): the class most asked for must", weights)
	}
}
