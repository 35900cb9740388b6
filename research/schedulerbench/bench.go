// Package schedulerbench measures the real kube-scheduler placing pods that
// ask for GPUs through ResourceClaimTemplates, on a local control plane with
// many simulated nodes, for Tessera's layout, plain whole devices and
// NVIDIA's layout in one run. A publisher writes each node's slices exactly
// as the layout publishes them (Tessera's through pkg/resourceslice, as the
// plugin does). Pods are only scheduled, never run: there is no kubelet, and
// a pod counts as placed once the scheduler has bound it (spec.nodeName set).
package schedulerbench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"

	"github.com/tessera-gpu/tessera/e2e/framework/cluster"
	tnvml "github.com/tessera-gpu/tessera/internal/nvml"
	"github.com/tessera-gpu/tessera/internal/nvml/nvmlmock"
	"github.com/tessera-gpu/tessera/internal/testing/podwatch"
	"github.com/tessera-gpu/tessera/pkg/inventory"
	"github.com/tessera-gpu/tessera/research/scheduling"
)

// Options configure a run.
type Options struct {
	BinDir, WorkDir string
	// Nodes is the number of simulated 8 x H200 nodes.
	Nodes int
	// Pods is the number of pods placed per layout.
	Pods int
	// PhaseTimeout bounds the placement of one layout's pods.
	PhaseTimeout time.Duration
	// Layouts are measured in this order, by kube-scheduler.
	Layouts []scheduling.Layout
	// TesseraScheduler, when set, is a tessera-scheduler binary (make
	// tessera-scheduler): it is started beside kube-scheduler and measured
	// after the layouts on the default layout (Withdrawn), as
	// "tessera-withdrawn/tessera-scheduler".
	TesseraScheduler string
	// Out receives progress and the result table.
	Out io.Writer
}

// Result is what one layout measured.
type Result struct {
	Layout string
	// Placed is the number of pods bound within the phase timeout.
	Placed, Pods int
	// PodsPerSecond is Placed over the time from the first pod's creation
	// to the last one's binding.
	PodsPerSecond float64
	// AttemptP50 and AttemptP99 are the scheduler's own scheduling-attempt
	// latency of the pods it scheduled (scheduler_scheduling_attempt_duration_seconds).
	AttemptP50, AttemptP99 time.Duration
	// BoundP50 and BoundP99 are from pod creation to binding as a client
	// sees it, queueing behind the other pods included.
	BoundP50, BoundP99 time.Duration
}

// mix is the realistic mix of claims pods ask for, per 20 pods.
var mix = map[scheduling.ClaimKind]int{
	scheduling.KindWhole: 5, scheduling.KindMIG1g: 5, scheduling.KindMIG3g: 3,
	scheduling.KindShare: 4, scheduling.KindFirstAvailable: 3,
}

// Run starts a control plane, registers the nodes and measures each layout.
func Run(ctx context.Context, opts Options) ([]Result, error) {
	logger := klog.FromContext(ctx)
	_, _ = fmt.Fprintf(opts.Out, "starting control plane in %s\n", opts.WorkDir)
	cp, err := cluster.Start(ctx, cluster.Options{BinDir: opts.BinDir, WorkDir: opts.WorkDir})
	if err != nil {
		return nil, err
	}
	defer func() {
		if err := cp.Stop(); err != nil {
			logger.Error(err, "Stop control plane")
		}
	}()
	inv, err := h200Inventory(ctx)
	if err != nil {
		return nil, err
	}
	_, _ = fmt.Fprintf(opts.Out, "registering %d nodes\n", opts.Nodes)
	names := make([]string, opts.Nodes)
	for i := range names {
		names[i] = fmt.Sprintf("gpu-node-%03d", i)
	}
	if err := parallel(ctx, names, func(ctx context.Context, name string) error { return createNode(ctx, cp.Client, name) }); err != nil {
		return nil, err
	}
	for _, dc := range scheduling.DeviceClasses() {
		if _, err := cp.Client.ResourceV1().DeviceClasses().Create(ctx, dc, metav1.CreateOptions{}); err != nil {
			return nil, fmt.Errorf("create DeviceClass %s: %w", dc.Name, err)
		}
	}
	metrics, err := newMetricsReader(cp, cp.SchedulerURL)
	if err != nil {
		return nil, err
	}
	type run struct {
		layout scheduling.Layout
		sched  scheduler
	}
	var runs []run
	for _, l := range opts.Layouts {
		runs = append(runs, run{l, scheduler{metrics: metrics}})
	}
	if opts.TesseraScheduler != "" {
		_, _ = fmt.Fprintf(opts.Out, "starting tessera-scheduler\n")
		if err := cp.StartTesseraScheduler(ctx, opts.TesseraScheduler); err != nil {
			return nil, err
		}
		tsMetrics, err := newMetricsReader(cp, cp.TesseraSchedulerURL)
		if err != nil {
			return nil, err
		}
		runs = append(runs, run{Withdrawn, scheduler{name: cluster.TesseraSchedulerName, metrics: tsMetrics}})
	}
	var results []Result
	for _, r := range runs {
		res, err := phase(ctx, cp, r.sched, inv, names, r.layout, opts)
		if err != nil {
			return results, fmt.Errorf("layout %s: %w", res.Layout, err)
		}
		results = append(results, res)
	}
	return results, nil
}

// scheduler is the scheduler a phase's pods ask for: kube-scheduler (name
// "") or tessera-scheduler, and where its metrics are read.
type scheduler struct {
	name    string
	metrics *metricsReader
}

func h200Inventory(ctx context.Context) (inventory.Node, error) {
	s, err := nvmlmock.New("dgxh200", 8, "bench")
	if err != nil {
		return inventory.Node{}, fmt.Errorf("start mock NVML: %w", err)
	}
	lib, err := tnvml.OpenMock(s)
	if err != nil {
		return inventory.Node{}, fmt.Errorf("open mock NVML: %w", err)
	}
	inv, err := lib.Discover(ctx)
	if err != nil {
		return inventory.Node{}, fmt.Errorf("discover mock GPUs: %w", err)
	}
	for i := range inv.GPUs {
		inv.GPUs[i].PCIBusID = fmt.Sprintf("0000:%02x:00.0", 0x18+0x10*i)
		inv.GPUs[i].PCIeRoot = fmt.Sprintf("pci0000:%02x", 0x10+0x10*i)
	}
	return inv, nil
}

func createNode(ctx context.Context, client kubernetes.Interface, name string) error {
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("224"),
		corev1.ResourceMemory: resource.MustParse("2Ti"),
		corev1.ResourcePods:   resource.MustParse("250"),
	}
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}},
		Status: corev1.NodeStatus{
			Capacity: capacity, Allocatable: capacity,
			Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "Simulated",
				LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}},
		},
	}
	if _, err := client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create node %s: %w", name, err)
	}
	return nil
}

// phase publishes one layout on every node, places its pods and cleans up.
func phase(ctx context.Context, cp *cluster.ControlPlane, sched scheduler, inv inventory.Node, nodes []string, l scheduling.Layout, opts Options) (Result, error) {
	client := cp.Client
	metrics := sched.metrics
	res := Result{Layout: l.Name, Pods: opts.Pods}
	ns := "bench-" + l.Name
	if sched.name != "" {
		res.Layout += "/" + sched.name
		ns += "-" + sched.name
	}
	label := res.Layout
	_, _ = fmt.Fprintf(opts.Out, "[%s] publishing slices on %d nodes\n", label, len(nodes))
	var published []string
	var mu sync.Mutex
	var rp *republisher
	slicesOf := func(node string) []*resourceapi.ResourceSlice { return l.Slices(node, inv) }
	if l.Name == Withdrawn.Name {
		rp = newRepublisher(client, inv, opts.Out)
		slicesOf = func(node string) []*resourceapi.ResourceSlice {
			out := rp.slices(node)
			rp.mu.Lock()
			rp.current[node] = out
			rp.mu.Unlock()
			return out
		}
	}
	err := parallel(ctx, nodes, func(ctx context.Context, node string) error {
		for _, s := range slicesOf(node) {
			if _, err := client.ResourceV1().ResourceSlices().Create(ctx, s, metav1.CreateOptions{}); err != nil {
				return fmt.Errorf("create ResourceSlice %s: %w", s.Name, err)
			}
			mu.Lock()
			published = append(published, s.Name)
			mu.Unlock()
		}
		return nil
	})
	defer cleanupSlices(ctx, client, published, opts.Out)
	if err != nil {
		return res, err
	}
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		return res, fmt.Errorf("create namespace %s: %w", ns, err)
	}
	defer cleanupNamespace(ctx, client, ns, opts.Out)
	if rp != nil {
		rpCtx, stopRepublisher := context.WithCancel(ctx)
		defer stopRepublisher()
		go rp.run(rpCtx, ns)
	}
	// Wait for the namespace's default service account: pods need it.
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := client.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	}); err != nil {
		return res, fmt.Errorf("service account of %s: %w", ns, err)
	}
	kinds := podKinds(l, opts.Pods)
	for _, kind := range scheduling.ClaimKinds {
		reqs := l.Requests(kind)
		if reqs == nil {
			continue
		}
		tmpl := &resourceapi.ResourceClaimTemplate{
			ObjectMeta: metav1.ObjectMeta{Name: string(kind), Namespace: ns},
			Spec:       resourceapi.ResourceClaimTemplateSpec{Spec: resourceapi.ResourceClaimSpec{Devices: resourceapi.DeviceClaim{Requests: reqs}}},
		}
		if _, err := client.ResourceV1().ResourceClaimTemplates(ns).Create(ctx, tmpl, metav1.CreateOptions{}); err != nil {
			return res, fmt.Errorf("create ResourceClaimTemplate %s: %w", kind, err)
		}
	}

	before, err := metrics.attempts(ctx)
	if err != nil {
		return res, err
	}
	watch, err := podwatch.Start(ctx, client, ns)
	if err != nil {
		return res, err
	}
	defer watch.Stop()
	_, _ = fmt.Fprintf(opts.Out, "[%s] creating %d pods\n", label, opts.Pods)
	start := time.Now()
	created := make([]time.Time, opts.Pods)
	idx := make([]int, opts.Pods)
	for i := range idx {
		idx[i] = i
	}
	createCtx, cancelCreate := context.WithCancel(ctx)
	defer cancelCreate()
	createErr := make(chan error, 1)
	go func() {
		createErr <- parallel(createCtx, idx, func(ctx context.Context, i int) error {
			created[i] = time.Now()
			_, err := client.CoreV1().Pods(ns).Create(ctx, pod(i, kinds[i], sched.name), metav1.CreateOptions{})
			if err != nil {
				return fmt.Errorf("create pod %d: %w", i, err)
			}
			return nil
		})
	}()

	deadline := time.Now().Add(opts.PhaseTimeout)
	ticker := time.NewTicker(5 * time.Second)
	defer ticker.Stop()
	for watch.Count() < opts.Pods && time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case err := <-createErr:
			if err != nil {
				return res, err
			}
			createErr = nil
		case <-ticker.C:
			n := watch.Count()
			_, _ = fmt.Fprintf(opts.Out, "[%s] %d/%d pods bound after %s (%.1f pods/s)\n", label, n, opts.Pods,
				time.Since(start).Round(time.Second), float64(n)/time.Since(start).Seconds())
		case <-watch.Changed():
		}
	}
	cancelCreate()
	bound := watch.Snapshot()
	after, err := metrics.attempts(ctx)
	if err != nil {
		return res, err
	}
	res.Placed = len(bound)
	var last time.Time
	var latencies []time.Duration
	for key, at := range bound {
		var i int
		if _, err := fmt.Sscanf(strings.TrimPrefix(key, ns+"/"), "pod-%d", &i); err != nil || i >= len(created) {
			continue
		}
		last = maxTime(last, at)
		latencies = append(latencies, at.Sub(created[i]))
	}
	if res.Placed > 0 {
		res.PodsPerSecond = float64(res.Placed) / last.Sub(start).Seconds()
	}
	slices.Sort(latencies)
	res.BoundP50, res.BoundP99 = quantile(latencies, 0.5), quantile(latencies, 0.99)
	diff := after.minus(before)
	res.AttemptP50, res.AttemptP99 = diff.quantile(0.5), diff.quantile(0.99)
	_, _ = fmt.Fprintf(opts.Out, "[%s] %d/%d pods bound, %.1f pods/s, attempt p50 %s p99 %s\n", label, res.Placed, res.Pods,
		res.PodsPerSecond, res.AttemptP50, res.AttemptP99)
	if rp != nil {
		rp.mu.Lock()
		_, _ = fmt.Fprintf(opts.Out, "[%s] %d slice writes (%d new pool generations) for %d pods bound\n", label, rp.updates, rp.bumps, res.Placed)
		rp.mu.Unlock()
	}
	return res, nil
}

// podKinds draws the claim kind of each pod from the mix, seeded, so every
// layout sees the same sequence; a kind the layout cannot express becomes a
// whole GPU.
func podKinds(l scheduling.Layout, n int) []scheduling.ClaimKind {
	var pattern []scheduling.ClaimKind
	for _, k := range scheduling.ClaimKinds {
		for range mix[k] {
			pattern = append(pattern, k)
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	out := make([]scheduling.ClaimKind, n)
	for i := range out {
		k := pattern[rng.IntN(len(pattern))]
		if l.Requests(k) == nil {
			k = scheduling.KindWhole
		}
		out[i] = k
	}
	return out
}

// pod is pod i, with a claim of the kind, for the named scheduler ("" for
// kube-scheduler).
func pod(i int, kind scheduling.ClaimKind, schedulerName string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("pod-%d", i), Labels: map[string]string{"claim": string(kind)}},
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{{
				Name: "c", Image: "registry.k8s.io/pause:3.10",
				Resources: corev1.ResourceRequirements{Claims: []corev1.ResourceClaim{{Name: "gpu"}}},
			}},
			ResourceClaims: []corev1.PodResourceClaim{{Name: "gpu", ResourceClaimTemplateName: ptr.To(string(kind))}},
			// No kubelet renews the simulated nodes' leases, so they turn
			// unreachable after a while; placement is all that is measured.
			Tolerations:                   []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			TerminationGracePeriodSeconds: ptr.To[int64](0),
			SchedulerName:                 schedulerName,
		},
	}
}

func cleanupNamespace(ctx context.Context, client kubernetes.Interface, ns string, out io.Writer) {
	_, _ = fmt.Fprintf(out, "[%s] cleaning up\n", ns)
	// Bound pods have no kubelet to confirm their end: delete them at once.
	_ = client.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}, metav1.ListOptions{})
	_ = client.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{})
	// Claims must be gone before the next layout: their allocations would
	// otherwise hold devices of the same names.
	err := wait.PollUntilContextTimeout(ctx, time.Second, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	if err != nil {
		_, _ = fmt.Fprintf(out, "[%s] namespace not gone: %v\n", ns, err)
	}
}

func cleanupSlices(ctx context.Context, client kubernetes.Interface, names []string, out io.Writer) {
	err := parallel(ctx, names, func(ctx context.Context, name string) error {
		err := client.ResourceV1().ResourceSlices().Delete(ctx, name, metav1.DeleteOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return err
	})
	if err != nil {
		_, _ = fmt.Fprintf(out, "delete slices: %v\n", err)
	}
}

// parallel runs f for every item on a few workers and returns all errors.
func parallel[T any](ctx context.Context, items []T, f func(context.Context, T) error) error {
	const workers = 16
	ch := make(chan T)
	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for item := range ch {
				if err := f(ctx, item); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		})
	}
	for _, item := range items {
		if ctx.Err() != nil {
			break
		}
		ch <- item
	}
	close(ch)
	wg.Wait()
	return errors.Join(errs...)
}

func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(q*float64(len(sorted))))]
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
