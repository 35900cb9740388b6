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
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/klog/v2/ktesting"
	drapb "k8s.io/kubelet/pkg/apis/dra/v1"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/pkg/resourceslice"
)

// allocationWatch follows the node's slices event by event and, at every
// event, checks that each device the test has allocated is published.
type allocationWatch struct {
	mu        sync.Mutex
	slices    map[string]*resourceapi.ResourceSlice
	allocated map[string]string // device → claim
	events    int
	hidden    []string
	changed   chan struct{}
}

func newAllocationWatch(t *testing.T, ctx context.Context, client *fake.Clientset) *allocationWatch {
	w := &allocationWatch{slices: map[string]*resourceapi.ResourceSlice{}, allocated: map[string]string{}, changed: make(chan struct{})}
	followSlices(t, ctx, client, "", w.apply)
	return w
}

// followSlices hands apply every slice event of client from resourceVersion
// on ("": from now) until the test ends.
func followSlices(t *testing.T, ctx context.Context, client *fake.Clientset, resourceVersion string, apply func(watch.Event)) {
	t.Helper()
	watcher, err := client.ResourceV1().ResourceSlices().Watch(ctx, metav1.ListOptions{ResourceVersion: resourceVersion})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(watcher.Stop)
	go func() {
		for ev := range watcher.ResultChan() {
			apply(ev)
		}
	}()
}

func (w *allocationWatch) apply(ev watch.Event) {
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
	published := w.publishedLocked()
	for device, claim := range w.allocated {
		if !published[device] {
			w.hidden = append(w.hidden, fmt.Sprintf("event %d (%s %s): %s, allocated to %s, not published", w.events, ev.Type, s.Name, device, claim))
		}
	}
	close(w.changed)
	w.changed = make(chan struct{})
}

func (w *allocationWatch) publishedLocked() map[string]bool {
	out := map[string]bool{}
	for _, s := range w.slices {
		for _, d := range s.Spec.Devices {
			out[d.Name] = true
		}
	}
	return out
}

// published is what the watch has seen published, sorted.
func (w *allocationWatch) published() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for d := range w.publishedLocked() {
		out = append(out, d)
	}
	slices.Sort(out)
	return out
}

// allocate allocates device to claim as the scheduler would: only while the
// watch sees it published (the allocator sees no other device).
func (w *allocationWatch) allocate(ctx context.Context, client *fake.Clientset, claim, device string) error {
	if err := w.waitFor(ctx, device+" published for "+claim, func(p map[string]bool) bool { return p[device] }); err != nil {
		return err
	}
	w.mu.Lock()
	w.allocated[device] = claim
	w.mu.Unlock()
	c := &resourceapi.ResourceClaim{
		ObjectMeta: metav1.ObjectMeta{Name: claim, Namespace: "ns", UID: types.UID(claim + "-uid")},
		Status: resourceapi.ResourceClaimStatus{Allocation: &resourceapi.AllocationResult{Devices: resourceapi.DeviceAllocationResult{
			Results: []resourceapi.DeviceRequestAllocationResult{{Request: "gpu", Driver: gpuapi.DriverName, Pool: "n1", Device: device}},
		}}},
	}
	_, err := client.ResourceV1().ResourceClaims("ns").Create(ctx, c, metav1.CreateOptions{})
	return err
}

// deallocate deletes the claim, as the claim's end deallocates its device.
func (w *allocationWatch) deallocate(ctx context.Context, client *fake.Clientset, claim, device string) error {
	w.mu.Lock()
	delete(w.allocated, device)
	w.mu.Unlock()
	return client.ResourceV1().ResourceClaims("ns").Delete(ctx, claim, metav1.DeleteOptions{})
}

// waitFor waits until what the watch sees published satisfies ok.
func (w *allocationWatch) waitFor(ctx context.Context, what string, ok func(map[string]bool) bool) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		w.mu.Lock()
		done, changed := ok(w.publishedLocked()), w.changed
		w.mu.Unlock()
		if done {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("waiting until %s: %w; published %v", what, ctx.Err(), w.published())
		}
	}
}

// TestTwoInstancesPublishFromTheCheckpointOnDisk runs two plugin instances on
// one node's state, as a rolling update does (both publish the node's pool,
// each through its own publication controller), and prepares and unprepares
// through both. The old instance (a) prepares a MIG partition of GPU 0, which
// withdraws the whole GPU; the new one (b) unprepares it, and the whole GPU is
// then allocated and prepared through b. Instance a serves no call after
// that: its view must follow the checkpoint on disk anyway, or its
// controller writes its stale view back (30 s after any change of the
// slices) and hides the allocated whole GPU. Before, claims on GPU 1 go in
// through one instance and out through the other, while the partition's
// claim is allocated. At every slice event,
// every allocated device is published; at the end, after a's controller
// synced, the slices are what the checkpoint says.
func TestTwoInstancesPublishFromTheCheckpointOnDisk(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for the publication controllers' 30 s sync")
	}
	_, ctx := ktesting.NewTestContext(t)
	client := fakeClient()
	w := newAllocationWatch(t, ctx, client)
	nvml := mockH200s(t, 2) // one node: both instances see the same GPUs
	inv, err := nvml.Discover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	withdraw := resourceslice.Options{Pool: gpuapi.PoolDefault, WithdrawBlocked: true}
	layout := func(prepared ...string) []string {
		opts := withdraw
		opts.Prepared = map[string]bool{}
		for _, d := range prepared {
			opts.Prepared[d] = true
		}
		var names []string
		for _, s := range resourceslice.Build("n1", inv, opts).Pools["n1"].Slices {
			for _, d := range s.Devices {
				names = append(names, d.Name)
			}
		}
		return sorted(names)
	}

	shared := newNodeDirs(t)
	instance := func(name string) drapb.DRAPluginClient {
		dirs := shared
		dirs.data, dirs.registrar = t.TempDir(), t.TempDir()
		runUntilEnd(t, ctx, "RunNode "+name, func(ctx context.Context) error { return runNode(t, ctx, dirs, client, nvml, withdraw) })
		dra := drapb.NewDRAPluginClient(dial(t, filepath.Join(dirs.data, "dra.sock")))
		// Serving once an unprepare of an unknown claim goes through.
		err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
			_, err := dra.NodeUnprepareResources(ctx, &drapb.NodeUnprepareResourcesRequest{Claims: []*drapb.Claim{{Namespace: "ns", Name: "none", Uid: "none"}}})
			return err == nil, nil
		})
		if err != nil {
			t.Fatalf("instance %s does not serve: %v", name, err)
		}
		return dra
	}
	a := instance("a")
	if err := w.waitFor(ctx, "a published", func(p map[string]bool) bool { return len(p) == 2*27 }); err != nil {
		t.Fatal(err)
	}
	b := instance("b")

	ref := func(claim string) []*drapb.Claim {
		return []*drapb.Claim{{Namespace: "ns", Name: claim, Uid: claim + "-uid"}}
	}
	prepare := func(via drapb.DRAPluginClient, claim string) error {
		r := prepareOnceServing(t, ctx, via, ref(claim)).Claims[claim+"-uid"]
		if r.GetError() != "" {
			return fmt.Errorf("prepare %s: %s", claim, r.GetError())
		}
		return nil
	}
	unprepare := func(via drapb.DRAPluginClient, claim string) error {
		resp, err := via.NodeUnprepareResources(ctx, &drapb.NodeUnprepareResourcesRequest{Claims: ref(claim)})
		if err != nil {
			return fmt.Errorf("unprepare %s: %w", claim, err)
		}
		if msg := resp.Claims[claim+"-uid"].GetError(); msg != "" {
			return fmt.Errorf("unprepare %s: %s", claim, msg)
		}
		return nil
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}

	// Churn on GPU 1, in through one instance and out through the other.
	churned := make(chan error, 1)
	go func() {
		churned <- func() error {
			for i := range 6 {
				in, out := a, b
				if i%2 == 1 {
					in, out = b, a
				}
				claim, device := fmt.Sprintf("churn-%d", i), fmt.Sprintf("gpu-1-mig-1g18gb-%d", i%3)
				if err := w.allocate(ctx, client, claim, device); err != nil {
					return err
				}
				if err := prepare(in, claim); err != nil {
					return err
				}
				if err := unprepare(out, claim); err != nil {
					return err
				}
				if err := w.deallocate(ctx, client, claim, device); err != nil {
					return err
				}
			}
			return nil
		}()
	}()

	const partition = "gpu-0-mig-1g18gb-0"
	must(w.allocate(ctx, client, "mig", partition))
	must(<-churned)
	// From here on, a serves no call.
	must(prepare(a, "mig"))
	must(w.waitFor(ctx, "the partition withdraws GPU 0 whole", func(p map[string]bool) bool { return !p["gpu-0"] }))
	must(unprepare(b, "mig"))
	must(w.deallocate(ctx, client, "mig", partition))
	must(w.allocate(ctx, client, "whole", "gpu-0"))
	must(prepare(b, "whole"))

	// Past a's controller's sync of every change above.
	time.Sleep(resourceslicesSyncDelay + 5*time.Second)
	want := layout("gpu-0")
	var got []string
	err = wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		got = w.published()
		return slices.Equal(got, want), nil
	})
	if err != nil {
		t.Errorf("after both controllers synced, published %v, want what the checkpoint says (GPU 0 prepared whole): %v", got, want)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, h := range w.hidden {
		t.Errorf("allocated device hidden at %s", h)
	}
	t.Logf("%d slice events", w.events)
}

// resourceslicesSyncDelay is the publication controller's delay before it
// writes its view back after a change of the slices
// (k8s.io/dynamic-resource-allocation/resourceslice.DefaultSyncDelay).
const resourceslicesSyncDelay = 30 * time.Second
