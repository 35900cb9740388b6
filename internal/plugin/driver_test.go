package plugin_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/klog/v2/ktesting"

	tnvml "github.com/tessera-gpu/tessera/internal/nvml"
	"github.com/tessera-gpu/tessera/internal/nvml/nvmlmock"
	"github.com/tessera-gpu/tessera/internal/plugin"
	"github.com/tessera-gpu/tessera/pkg/inventory"
)

// changingNVML serves a real mock inventory and can lose GPUs, as a node
// does when a GPU falls off the bus.
type changingNVML struct {
	tnvml.Library
	mu   sync.Mutex
	keep int
}

func (c *changingNVML) Discover(ctx context.Context) (inventory.Node, error) {
	node, err := c.Library.Discover(ctx)
	if err != nil {
		return node, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	node.GPUs = node.GPUs[:c.keep]
	return node, nil
}

func (c *changingNVML) lose(n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.keep -= n
}

// fakeClient fills in generateName and, for slices, a new resourceVersion on
// every write, as the API server would. The publication controller compares
// resourceVersions to prefer its own latest write over an older copy its
// informer still holds (a client-go MutationCache); without them it would
// compare a changed pool against a stale slice.
func fakeClient() *fake.Clientset {
	// The publication controller owns slices through the Node object.
	client := fake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", UID: "n1-uid"}})
	var mu sync.Mutex
	n, version := 0, 1000
	stamp := func(action k8stesting.Action) (bool, runtime.Object, error) {
		slice, ok := action.(interface{ GetObject() runtime.Object }).GetObject().(*resourceapi.ResourceSlice)
		if !ok {
			return false, nil, nil
		}
		mu.Lock()
		defer mu.Unlock()
		if slice.Name == "" && slice.GenerateName != "" {
			n++
			slice.Name = fmt.Sprintf("%s%d", slice.GenerateName, n)
		}
		version++
		slice.ResourceVersion = fmt.Sprint(version)
		return false, nil, nil
	}
	client.PrependReactor("create", "resourceslices", stamp)
	client.PrependReactor("update", "resourceslices", stamp)
	return client
}

func publishedDevices(ctx context.Context, client *fake.Clientset) (int, error) {
	slices, err := client.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{})
	if err != nil {
		return 0, err
	}
	n := 0
	for _, s := range slices.Items {
		n += len(s.Spec.Devices)
	}
	return n, nil
}

func TestPublishesAndRepublishesOnInventoryChange(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	nvml := &changingNVML{Library: mockH200s(t, 2), keep: 2}
	client := fakeClient()
	runPlugin(t, ctx, plugin.Config{RediscoverInterval: 20 * time.Millisecond}, plugin.Components{KubeClient: client, NVML: nvml})
	// 27 devices per H200: whole, shared and 25 MIG partitions.
	waitForDevices(t, ctx, client, 54)
	nvml.lose(1)
	waitForDevices(t, ctx, client, 27)
}

// TestLostGPUDoesNotStopPublication: a GPU that fell off the bus before
// the plugin started does not stop it: the others are published. One
// lost after publication stays published (its devices may be allocated),
// for the health monitor to taint.
func TestLostGPUDoesNotStopPublication(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	s, err := nvmlmock.New("dgxh200", 3, "n1")
	if err != nil {
		t.Fatal(err)
	}
	lib, err := tnvml.OpenMock(s)
	if err != nil {
		t.Fatal(err)
	}
	s.SetLost(2, true)
	counted := &countingNVML{Library: lib}
	client := fakeClient()
	runPlugin(t, ctx, plugin.Config{RediscoverInterval: 20 * time.Millisecond}, plugin.Components{KubeClient: client, NVML: counted})
	waitForDevices(t, ctx, client, 2*27)
	// GPU 2 comes back, then GPU 0 falls off: GPU 0 stays published.
	s.SetLost(2, false)
	waitForDevices(t, ctx, client, 3*27)
	s.SetLost(0, true)
	seen := counted.calls.Load()
	err = wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		return counted.calls.Load() >= seen+3, nil
	})
	if err != nil {
		t.Fatal("no rediscovery after GPU 0 was lost")
	}
	if got, err := publishedDevices(ctx, client); err != nil || got != 3*27 {
		t.Errorf("after GPU 0 was lost: %d devices published (%v), want all %d", got, err, 3*27)
	}
}

// countingNVML counts discoveries.
type countingNVML struct {
	tnvml.Library
	calls atomic.Int64
}

func (c *countingNVML) Discover(ctx context.Context) (inventory.Node, error) {
	defer c.calls.Add(1)
	return c.Library.Discover(ctx)
}
