package plugin_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/klog/v2/ktesting"
	drapb "k8s.io/kubelet/pkg/apis/dra/v1"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/internal/checkpoint"
	"github.com/tessera-gpu/tessera/internal/hardware"
	tnvml "github.com/tessera-gpu/tessera/internal/nvml"
	"github.com/tessera-gpu/tessera/internal/plugin"
	"github.com/tessera-gpu/tessera/pkg/resourceslice"
)

// nodeDirs are one simulated node's host directories.
type nodeDirs struct{ data, registrar, cdi, state string }

func newNodeDirs(t *testing.T) nodeDirs {
	return nodeDirs{data: t.TempDir(), registrar: t.TempDir(), cdi: t.TempDir(), state: t.TempDir()}
}

// runNode runs plugin.RunNode on a node of dirs with one mock H200 behind nvml
// (nil: the plain mock), publishing with sliceOpts (the defaults without).
func runNode(t *testing.T, ctx context.Context, dirs nodeDirs, client *fake.Clientset, nvml tnvml.Library, sliceOpts ...resourceslice.Options) error {
	if nvml == nil {
		nvml = mockH200s(t, 1)
	}
	cfg := nodeConfig(dirs)
	if len(sliceOpts) > 0 {
		cfg.Slices = sliceOpts[0]
	}
	return plugin.RunNode(ctx, cfg, client, simulated(t, ctx, nvml, dirs))
}

// nodeConfig is the configuration of a node of dirs named n1, without
// rediscovery and probes.
func nodeConfig(dirs nodeDirs) plugin.Config {
	return plugin.Config{
		NodeName: "n1", PluginDataDir: dirs.data, RegistrarDir: dirs.registrar, CDIRoot: dirs.cdi, StateDir: dirs.state,
		RediscoverInterval: time.Hour, HealthPort: -1,
	}
}

// simulated is a simulated node's hardware around nvml, on a driver root
// without driver files.
func simulated(t *testing.T, ctx context.Context, nvml tnvml.Library, dirs nodeDirs) hardware.Node {
	return hardware.Simulated(ctx, nvml, hardware.Config{DriverRoot: t.TempDir(), StateDir: dirs.state})
}

// TestRunNodePreparesThroughTheKubeletAPI wires the whole node side (the
// preparer on its checkpoint, CDI root and MPS control, the health monitor)
// and prepares a share through the kubelet's gRPC API: the claim's CDI spec
// appears, with the claim's own MPS directories, and goes on unprepare.
func TestRunNodePreparesThroughTheKubeletAPI(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	client := fakeClient()
	claim := &resourceapi.ResourceClaim{
		ObjectMeta: metav1.ObjectMeta{Name: "share", Namespace: "ns", UID: "share-uid"},
		Status: resourceapi.ResourceClaimStatus{Allocation: &resourceapi.AllocationResult{Devices: resourceapi.DeviceAllocationResult{
			Results: []resourceapi.DeviceRequestAllocationResult{{
				Request: "gpu", Driver: gpuapi.DriverName, Pool: "n1", Device: "gpu-0-shared", ShareID: ptr(types.UID("s1")),
				ConsumedCapacity: map[resourceapi.QualifiedName]resource.Quantity{
					gpuapi.DriverName + "/" + gpuapi.CapMemory: resource.MustParse("4Gi"), gpuapi.DriverName + "/" + gpuapi.CapCompute: resource.MustParse("25"),
				},
			}},
		}}},
	}
	if _, err := client.ResourceV1().ResourceClaims("ns").Create(ctx, claim, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	dirs := newNodeDirs(t)
	runUntilEnd(t, ctx, "RunNode", func(ctx context.Context) error { return runNode(t, ctx, dirs, client, nil) })
	dra := drapb.NewDRAPluginClient(dial(t, filepath.Join(dirs.data, "dra.sock")))
	ref := []*drapb.Claim{{Namespace: "ns", Name: "share", Uid: "share-uid"}}
	if r := prepareOnceServing(t, ctx, dra, ref).Claims["share-uid"]; r.GetError() != "" || len(r.GetDevices()) != 1 {
		t.Fatalf("prepare result: %v", r)
	}
	specs, _ := filepath.Glob(filepath.Join(dirs.cdi, "*share-uid*"))
	if len(specs) != 1 {
		t.Fatalf("CDI specs of the claim: %v", specs)
	}
	spec, err := os.ReadFile(specs[0])
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(spec), filepath.Join(dirs.state, "mps", "share-uid", "pipe")) {
		t.Errorf("CDI spec lacks the claim's own MPS pipe directory:\n%s", spec)
	}
	if _, err := dra.NodeUnprepareResources(ctx, &drapb.NodeUnprepareResourcesRequest{Claims: ref}); err != nil {
		t.Fatal(err)
	}
	if specs, _ := filepath.Glob(filepath.Join(dirs.cdi, "*share-uid*")); len(specs) != 0 {
		t.Errorf("CDI specs left after unprepare: %v", specs)
	}
}

// TestRunNodeRefusesUnreadableCheckpoint: a checkpoint that cannot be
// read stops the node before anything is touched, with an error naming it.
func TestRunNodeRefusesUnreadableCheckpoint(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	dirs := newNodeDirs(t)
	path := filepath.Join(dirs.state, checkpoint.FileName)
	if err := os.WriteFile(path, []byte(`{"version":"v9"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	err := runNode(t, ctx, dirs, fakeClient(), nil)
	if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "unknown version") {
		t.Errorf("RunNode on an unreadable checkpoint: %v; want an error naming %s", err, path)
	}
}

// TestRunNodeRefusesAHostProcThatIsNone: a --host-proc in which the plugin
// cannot find itself (not the host's procfs) stops the node with an error
// naming the flag, rather than leaving every share's usage at 0.
func TestRunNodeRefusesAHostProcThatIsNone(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	dirs := newNodeDirs(t)
	cfg := nodeConfig(dirs)
	cfg.ClaimMetricsInterval = time.Hour
	cfg.HostProc = t.TempDir()
	// Bounded: a node that accepted the path would serve until ctx ends.
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	err := plugin.RunNode(ctx, cfg, fakeClient(), simulated(t, ctx, mockH200s(t, 1), dirs))
	if err == nil || !strings.Contains(err.Error(), "--host-proc="+cfg.HostProc) {
		t.Errorf("RunNode with an empty --host-proc: %v; want an error naming the flag", err)
	}
}

func ptr[T any](v T) *T { return &v }

// TestRunNodeDiscoversOnce: the preparer, the health monitor and the
// publication start from one discovery of the node.
func TestRunNodeDiscoversOnce(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	counted := &countingNVML{Library: mockH200s(t, 1)}
	client := fakeClient()
	dirs := newNodeDirs(t)
	runUntilEnd(t, ctx, "RunNode", func(ctx context.Context) error { return runNode(t, ctx, dirs, client, counted) })
	waitForDevices(t, ctx, client, 27)
	if n := counted.calls.Load(); n != 1 {
		t.Errorf("the node was discovered %d times at start, want once", n)
	}
}

// publishedNames are the names of the devices client holds, sorted.
func publishedNames(ctx context.Context, t *testing.T, client *fake.Clientset) []string {
	t.Helper()
	list, err := client.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range list.Items {
		for _, d := range s.Spec.Devices {
			names = append(names, d.Name)
		}
	}
	return sorted(names)
}

// TestRunNodeWithdrawsWhatPreparedDevicesBlock: with WithdrawBlocked, a
// MIG partition prepared through the kubelet's API takes its GPU's whole and
// shared devices and the placements it overlaps out of the slices, exactly as
// resourceslice.Build says for it; after a restart the first publication
// already leaves them out (the checkpoint knows the claim); once the claim is
// unprepared, every device is back.
func TestRunNodeWithdrawsWhatPreparedDevicesBlock(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	client := fakeClient()
	const device = "gpu-0-mig-1g18gb-0"
	claim := &resourceapi.ResourceClaim{
		ObjectMeta: metav1.ObjectMeta{Name: "mig", Namespace: "ns", UID: "mig-uid"},
		Status: resourceapi.ResourceClaimStatus{Allocation: &resourceapi.AllocationResult{Devices: resourceapi.DeviceAllocationResult{
			Results: []resourceapi.DeviceRequestAllocationResult{{Request: "gpu", Driver: gpuapi.DriverName, Pool: "n1", Device: device}},
		}}},
	}
	if _, err := client.ResourceV1().ResourceClaims("ns").Create(ctx, claim, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	withdraw := resourceslice.Options{Pool: gpuapi.PoolDefault, WithdrawBlocked: true}
	// One GPU for both runs: its MIG instance outlives the restart.
	nvml := mockH200s(t, 1)
	inv, err := nvml.Discover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	layout := func(prepared map[string]bool) []string {
		opts := withdraw
		opts.Prepared = prepared
		var names []string
		for _, s := range resourceslice.Build("n1", inv, opts).Pools["n1"].Slices {
			for _, d := range s.Devices {
				names = append(names, d.Name)
			}
		}
		return sorted(names)
	}
	all, blocked := layout(nil), layout(map[string]bool{device: true})
	if len(all) != 27 || len(blocked) >= len(all) || !slices.Contains(blocked, device) || slices.Contains(blocked, "gpu-0") {
		t.Fatalf("resourceslice.Build publishes %d devices, %v with %s prepared", len(all), blocked, device)
	}
	waitNames := func(want []string, when string) {
		t.Helper()
		var got []string
		err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
			got = publishedNames(ctx, t, client)
			return slices.Equal(got, want), nil
		})
		if err != nil {
			t.Fatalf("%s: published %v, want %v", when, got, want)
		}
	}

	dirs := newNodeDirs(t)
	run := func() context.CancelFunc {
		ctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- runNode(t, ctx, dirs, client, nvml, withdraw) }()
		stop := func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("RunNode: %v", err)
			}
		}
		once := sync.OnceFunc(stop)
		t.Cleanup(once)
		return once
	}
	stop := run()
	waitNames(all, "nothing prepared")
	dra := drapb.NewDRAPluginClient(dial(t, filepath.Join(dirs.data, "dra.sock")))
	ref := []*drapb.Claim{{Namespace: "ns", Name: "mig", Uid: "mig-uid"}}
	if r := prepareOnceServing(t, ctx, dra, ref).Claims["mig-uid"]; r.GetError() != "" {
		t.Fatalf("prepare result: %v", r)
	}
	waitNames(blocked, "the partition prepared")

	// A restarted plugin publishes from its checkpoint: withdrawn at once.
	stop()
	var mu sync.Mutex
	var seen []string
	client.PrependReactor("*", "resourceslices", func(action k8stesting.Action) (bool, runtime.Object, error) {
		if o, ok := action.(interface{ GetObject() runtime.Object }); ok {
			if s, ok := o.GetObject().(*resourceapi.ResourceSlice); ok {
				mu.Lock()
				for _, d := range s.Spec.Devices {
					seen = append(seen, d.Name)
				}
				mu.Unlock()
			}
		}
		return false, nil, nil
	})
	run()
	dra = drapb.NewDRAPluginClient(dial(t, filepath.Join(dirs.data, "dra.sock")))
	waitNames(blocked, "after a restart")
	mu.Lock()
	for _, n := range seen {
		if !slices.Contains(blocked, n) {
			t.Errorf("the restarted plugin wrote a slice with %s, which the prepared partition blocks", n)
		}
	}
	mu.Unlock()
	err = wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		resp, err := dra.NodeUnprepareResources(ctx, &drapb.NodeUnprepareResourcesRequest{Claims: ref})
		return err == nil && resp.Claims["mig-uid"].GetError() == "", nil
	})
	if err != nil {
		t.Fatalf("NodeUnprepareResources after the restart: %v", err)
	}
	waitNames(all, "the partition unprepared")
}

// TestRunNodeStopsOnAServiceError: a server of the node side that fails
// (here the metrics endpoint, whose address is taken) stops the others and
// the plugin, and RunNode returns its error instead of serving on without it.
func TestRunNodeStopsOnAServiceError(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = taken.Close() })
	dirs := newNodeDirs(t)
	cfg := nodeConfig(dirs)
	cfg.MetricsAddress = taken.Addr().String()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	hw := simulated(t, ctx, mockH200s(t, 1), dirs)
	go func() { done <- plugin.RunNode(ctx, cfg, fakeClient(), hw) }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "listen for metrics on "+cfg.MetricsAddress) {
			t.Errorf("RunNode = %v, want the metrics endpoint's error", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("RunNode still serves 30 s after its metrics endpoint failed")
	}
}
