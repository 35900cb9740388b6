package plugin_test

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/klog/v2/ktesting"
	drapb "k8s.io/kubelet/pkg/apis/dra/v1"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/pkg/resourceslice"
)

// poolWatch follows a node's slices event by event, as the scheduler's
// informer does, and records every moment the pool looked incomplete.
type poolWatch struct {
	mu     sync.Mutex
	slices map[string]*resourceapi.ResourceSlice
	events int
	// complete is set once the pool was first complete: while the plugin
	// creates its slices the pool cannot be.
	complete   bool
	incomplete []string
}

func (w *poolWatch) apply(ev watch.Event) {
	s, ok := ev.Object.(*resourceapi.ResourceSlice)
	if !ok {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.events++
	if ev.Type == watch.Deleted {
		delete(w.slices, s.Name)
	} else {
		w.slices[s.Name] = s
	}
	var generation, want, have int64
	for _, s := range w.slices {
		if s.Spec.Pool.Generation > generation {
			generation, want = s.Spec.Pool.Generation, s.Spec.Pool.ResourceSliceCount
		}
	}
	for _, s := range w.slices {
		if s.Spec.Pool.Generation == generation {
			have++
		}
	}
	switch {
	case have == want:
		w.complete = true
	case w.complete:
		w.incomplete = append(w.incomplete, fmt.Sprintf("event %d (%s %s): %d of %d slices of generation %d", w.events, ev.Type, s.Name, have, want, generation))
	}
}

// watchPool follows client's slices from now on until the test ends, from
// what the API server holds now: a pool already complete stays under watch
// as one (an empty one becomes complete once the plugin has created it).
func watchPool(t *testing.T, ctx context.Context, client *fake.Clientset) *poolWatch {
	t.Helper()
	list, err := client.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w := &poolWatch{slices: map[string]*resourceapi.ResourceSlice{}, complete: len(list.Items) > 0}
	for _, s := range list.Items {
		w.slices[s.Name] = &s
	}
	followSlices(t, ctx, client, list.ResourceVersion, w.apply)
	return w
}

// check fails the test for every event at which the pool looked incomplete,
// once the watch has seen the slices the API server holds now.
func (w *poolWatch) check(t *testing.T, ctx context.Context, client *fake.Clientset) {
	t.Helper()
	list, err := client.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	err = wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		w.mu.Lock()
		defer w.mu.Unlock()
		if len(w.slices) != len(list.Items) {
			return false, nil
		}
		for _, s := range list.Items {
			if seen, ok := w.slices[s.Name]; !ok || seen.ResourceVersion != s.ResourceVersion {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		t.Errorf("the watch did not see the slices the API server holds: %v", err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, s := range w.incomplete {
		t.Errorf("pool incomplete at %s", s)
	}
	t.Logf("%d slice events, the pool incomplete at %d", w.events, len(w.incomplete))
}

// TestWithdrawalKeepsThePoolComplete prepares and unprepares a claim of three
// whole GPUs on a node that withdraws blocked devices: each changes three
// per-GPU slices, and at no slice event may the pool look incomplete (the
// scheduler allocates nothing from an incomplete pool, so a pod created then
// would go elsewhere). The unprepare returns with every device published
// again, so no withdrawal made for the claim can land after its pod is gone.
func TestWithdrawalKeepsThePoolComplete(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	client := fakeClient()
	devices := []string{"gpu-0", "gpu-1", "gpu-3"}
	var results []resourceapi.DeviceRequestAllocationResult
	for _, d := range devices {
		results = append(results, resourceapi.DeviceRequestAllocationResult{Request: "gpus", Driver: gpuapi.DriverName, Pool: "n1", Device: d})
	}
	claim := &resourceapi.ResourceClaim{
		ObjectMeta: metav1.ObjectMeta{Name: "three", Namespace: "ns", UID: "three-uid"},
		Status:     resourceapi.ResourceClaimStatus{Allocation: &resourceapi.AllocationResult{Devices: resourceapi.DeviceAllocationResult{Results: results}}},
	}
	if _, err := client.ResourceV1().ResourceClaims("ns").Create(ctx, claim, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	w := watchPool(t, ctx, client)

	dirs := newNodeDirs(t)
	withdraw := resourceslice.Options{Pool: gpuapi.PoolDefault, WithdrawBlocked: true}
	runUntilEnd(t, ctx, "RunNode", func(ctx context.Context) error {
		return runNode(t, ctx, dirs, client, mockH200s(t, 4), withdraw)
	})
	all := 4 * 27
	waitForDevices(t, ctx, client, all)
	dra := drapb.NewDRAPluginClient(dial(t, filepath.Join(dirs.data, "dra.sock")))
	ref := []*drapb.Claim{{Namespace: "ns", Name: "three", Uid: "three-uid"}}
	if r := prepareOnceServing(t, ctx, dra, ref).Claims["three-uid"]; r.GetError() != "" {
		t.Fatalf("prepare result: %v", r)
	}
	// Each whole GPU publishes itself alone.
	waitForDevices(t, ctx, client, all-3*26)
	err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		resp, err := dra.NodeUnprepareResources(ctx, &drapb.NodeUnprepareResourcesRequest{Claims: ref})
		return err == nil && resp.Claims["three-uid"].GetError() == "", nil
	})
	if err != nil {
		t.Fatalf("NodeUnprepareResources: %v", err)
	}
	// The unprepare returns only once the slices no longer withdraw
	// anything for the claim (UnprepareResourceClaims says why).
	if got, err := publishedDevices(ctx, client); err != nil || got != all {
		t.Errorf("right after the unprepare returned, %d devices published (%v), want %d", got, err, all)
	}

	w.check(t, ctx, client)
}

// TestPublicationStepsFromWhatTheAPIServerHolds: in a rolling update the
// other plugin instance publishes the node's pool too. Here it has written GPU
// 1's slice since this instance last published (as if it had prepared GPU 1
// and this instance had not yet seen it); this instance then prepares GPU 2
// and publishes GPU 1 free and GPU 2 withdrawn. Counted from its own last
// publication that is one slice changed, but two of the stored ones, and the
// publication controller would bump the pool's generation and rewrite every
// slice, the pool incomplete meanwhile and a slice replaced (its devices
// hidden until the new one lands). Counted from what the API server holds it
// is two steps of one slice each: the pool stays complete at every event.
func TestPublicationStepsFromWhatTheAPIServerHolds(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	client := fakeClient()
	claim := &resourceapi.ResourceClaim{
		ObjectMeta: metav1.ObjectMeta{Name: "two", Namespace: "ns", UID: "two-uid"},
		Status: resourceapi.ResourceClaimStatus{Allocation: &resourceapi.AllocationResult{Devices: resourceapi.DeviceAllocationResult{
			Results: []resourceapi.DeviceRequestAllocationResult{{Request: "gpu", Driver: gpuapi.DriverName, Pool: "n1", Device: "gpu-2"}},
		}}},
	}
	if _, err := client.ResourceV1().ResourceClaims("ns").Create(ctx, claim, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	nvml := mockH200s(t, 4)
	inv, err := nvml.Discover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dirs := newNodeDirs(t)
	withdraw := resourceslice.Options{Pool: gpuapi.PoolDefault, WithdrawBlocked: true}
	runUntilEnd(t, ctx, "RunNode", func(ctx context.Context) error { return runNode(t, ctx, dirs, client, nvml, withdraw) })
	all := 4 * 27
	waitForDevices(t, ctx, client, all)

	// The other instance's publication of GPU 1 prepared whole, written
	// as its controller writes it: GPU 1's slice updated in place.
	opts := withdraw
	opts.Prepared = map[string]bool{"gpu-1": true}
	var gpu1 []resourceapi.Device
	for _, s := range resourceslice.Build("n1", inv, opts).Pools["n1"].Slices {
		for _, d := range s.Devices {
			if d.Name == "gpu-1" {
				gpu1 = s.Devices
			}
		}
	}
	list, err := client.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var generation int64
	for _, s := range list.Items {
		generation = s.Spec.Pool.Generation
		if !slices.ContainsFunc(s.Spec.Devices, func(d resourceapi.Device) bool { return d.Name == "gpu-1" }) {
			continue
		}
		s.Spec.Devices = gpu1
		if _, err := client.ResourceV1().ResourceSlices().Update(ctx, &s, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	waitForDevices(t, ctx, client, all-26)

	w := watchPool(t, ctx, client)

	dra := drapb.NewDRAPluginClient(dial(t, filepath.Join(dirs.data, "dra.sock")))
	ref := []*drapb.Claim{{Namespace: "ns", Name: "two", Uid: "two-uid"}}
	if r := prepareOnceServing(t, ctx, dra, ref).Claims["two-uid"]; r.GetError() != "" {
		t.Fatalf("prepare result: %v", r)
	}
	// GPU 1 back (this instance's checkpoint does not hold it), GPU 2 alone.
	var published map[string]bool
	err = wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		list, err = client.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		published = map[string]bool{}
		for _, s := range list.Items {
			for _, d := range s.Spec.Devices {
				published[d.Name] = true
			}
		}
		return published["gpu-1-shared"] && !published["gpu-2-shared"], nil
	})
	if err != nil {
		t.Fatalf("waiting for GPU 1 whole back and GPU 2 alone: %v; published %d devices", err, len(published))
	}
	for _, s := range list.Items {
		if s.Spec.Pool.Generation != generation {
			t.Errorf("slice %s of generation %d, want the pool's generation kept at %d", s.Name, s.Spec.Pool.Generation, generation)
		}
	}
	w.check(t, ctx, client)
}

// TestFirstPublicationStepsFromWhatTheAPIServerHolds: a plugin starts where
// the API server holds the node's pool as another process published it (the
// instance it replaces, or itself before a restart) and two GPUs' slices
// differ from what it publishes. Its first publication goes one slice at a
// time too, so the pool keeps its generation and is complete at every event.
func TestFirstPublicationStepsFromWhatTheAPIServerHolds(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	client := fakeClient()
	nvml := mockH200s(t, 4)
	inv, err := nvml.Discover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	withdraw := resourceslice.Options{Pool: gpuapi.PoolDefault, WithdrawBlocked: true}
	before := withdraw
	before.Prepared = map[string]bool{"gpu-1": true, "gpu-2-mig-1g18gb-0": true}
	held := resourceslice.Build("n1", inv, before).Pools["n1"]
	node := "n1"
	for i, s := range held.Slices {
		slice := &resourceapi.ResourceSlice{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%05x-%s-n1-old%d", i, gpuapi.DriverName, i)},
			Spec: resourceapi.ResourceSliceSpec{
				Driver: gpuapi.DriverName, NodeName: &node, Devices: s.Devices, SharedCounters: s.SharedCounters,
				Pool: resourceapi.ResourcePool{Name: "n1", Generation: 1, ResourceSliceCount: int64(len(held.Slices))},
			},
		}
		if _, err := client.ResourceV1().ResourceSlices().Create(ctx, slice, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	w := watchPool(t, ctx, client)

	runUntilEnd(t, ctx, "RunNode", func(ctx context.Context) error { return runNode(t, ctx, newNodeDirs(t), client, nvml, withdraw) })
	waitForDevices(t, ctx, client, 4*27)
	list, err := client.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range list.Items {
		if s.Spec.Pool.Generation != 1 {
			t.Errorf("slice %s of generation %d, want the pool's generation kept at 1", s.Name, s.Spec.Pool.Generation)
		}
	}
	w.check(t, ctx, client)
}
