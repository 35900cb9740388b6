package plugin_test

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/klog/v2/ktesting"
	drahealthv1 "k8s.io/kubelet/pkg/apis/dra-health/v1"

	"github.com/tessera-gpu/tessera/internal/plugin"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
)

// fakeHealth is a HealthSource whose taints a test sets.
type fakeHealth struct {
	mu      sync.Mutex
	taints  map[string][]resourceapi.DeviceTaint
	changed chan struct{}
}

func (f *fakeHealth) Taints() map[string][]resourceapi.DeviceTaint {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.taints
}

func (f *fakeHealth) Changed() <-chan struct{} { return f.changed }

func (f *fakeHealth) set(taints map[string][]resourceapi.DeviceTaint) {
	f.mu.Lock()
	f.taints = taints
	f.mu.Unlock()
	f.changed <- struct{}{}
}

func TestRepublishesOnHealthChange(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	health := &fakeHealth{changed: make(chan struct{}, 1)}
	client := fakeClient()
	runPlugin(t, ctx, plugin.Config{}, plugin.Components{KubeClient: client, Health: health})

	tainted := func(ctx context.Context) (map[string]string, error) {
		slices, err := client.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, err
		}
		out := map[string]string{}
		for _, s := range slices.Items {
			for _, d := range s.Spec.Devices {
				for _, tn := range d.Taints {
					out[d.Name] = tn.Key + "=" + tn.Value + ":" + string(tn.Effect)
				}
			}
		}
		return out, nil
	}
	waitFor := func(want map[string]string) {
		t.Helper()
		var got map[string]string
		err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
			var err error
			got, err = tainted(ctx)
			return len(got) == len(want) && (len(want) == 0 || got["gpu-0"] == want["gpu-0"]), err
		})
		if err != nil {
			t.Fatalf("tainted devices %v, want %v: %v", got, want, err)
		}
	}
	waitFor(map[string]string{})
	taint := resourceapi.DeviceTaint{Key: gpuapi.TaintKeyUnhealthy, Value: "xid-79", Effect: resourceapi.DeviceTaintEffectNoSchedule}
	health.set(map[string][]resourceapi.DeviceTaint{"gpu-0": {taint}, "gpu-0-shared": {taint}})
	waitFor(map[string]string{"gpu-0": gpuapi.TaintKeyUnhealthy + "=xid-79:NoSchedule", "gpu-0-shared": "x"})
	health.set(nil)
	waitFor(map[string]string{})
}

// TestDeviceHealthReachesTheKubelet: through the kubelet's health API,
// every published device is reported, dynamic MIG partitions included;
// healthy until its GPU or instance is tainted, then Unhealthy with the
// taint as the reason.
func TestDeviceHealthReachesTheKubelet(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	health := &fakeHealth{changed: make(chan struct{}, 1)}
	opts := runPlugin(t, ctx, plugin.Config{}, plugin.Components{Health: health})
	conn := dial(t, filepath.Join(opts.PluginDataDir, "dra.sock"))
	var stream grpc.ServerStreamingClient[drahealthv1.NodeWatchResourcesResponse]
	// The stream lives as long as the test, not as the poll.
	var err error
	err = wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		stream, err = drahealthv1.NewDRAResourceHealthClient(conn).NodeWatchResources(ctx, &drahealthv1.NodeWatchResourcesRequest{})
		if err != nil {
			return false, nil
		}
		// The first report proves the plugin serves the stream.
		_, err = stream.Header()
		return err == nil, nil
	})
	if err != nil {
		t.Fatalf("NodeWatchResources: %v", err)
	}
	// next returns the next report that covers every published device.
	next := func() map[string]drahealthv1.HealthStatus {
		t.Helper()
		for {
			resp, err := stream.Recv()
			if err != nil {
				t.Fatalf("receive health: %v", err)
			}
			if len(resp.Devices) == 27 {
				out := map[string]drahealthv1.HealthStatus{}
				for _, d := range resp.Devices {
					out[d.Device.DeviceName] = d.Health
				}
				return out
			}
		}
	}
	got := next()
	if got["gpu-0"] != drahealthv1.HealthStatus_HEALTHY || got["gpu-0-mig-1g18gb-3"] != drahealthv1.HealthStatus_HEALTHY {
		t.Errorf("initial report: %v, want every device healthy", got)
	}
	health.set(map[string][]resourceapi.DeviceTaint{
		"gpu-0-mig-1g18gb-3": {{Key: gpuapi.TaintKeyUnhealthy, Value: "xid-94", Effect: resourceapi.DeviceTaintEffectNoSchedule}},
	})
	err = wait.PollUntilContextTimeout(ctx, 0, 30*time.Second, true, func(context.Context) (bool, error) {
		got = next()
		return got["gpu-0-mig-1g18gb-3"] == drahealthv1.HealthStatus_UNHEALTHY, nil
	})
	if err != nil || got["gpu-0"] != drahealthv1.HealthStatus_HEALTHY {
		t.Errorf("after an XID in one MIG instance: %v (%v); want only that partition unhealthy", got, err)
	}
}
