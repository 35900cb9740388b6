package plugin_test

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
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
	w := &poolWatch{slices: map[string]*resourceapi.ResourceSlice{}}
	watcher, err := client.ResourceV1().ResourceSlices().Watch(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer watcher.Stop()
	go func() {
		for ev := range watcher.ResultChan() {
			w.apply(ev)
		}
	}()

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
	err = wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
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

	w.mu.Lock()
	defer w.mu.Unlock()
	for _, s := range w.incomplete {
		t.Errorf("pool incomplete at %s", s)
	}
	t.Logf("%d slice events, the pool complete at each", w.events)
}
