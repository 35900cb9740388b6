package plugin_test

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/klog/v2/ktesting"
	drapb "k8s.io/kubelet/pkg/apis/dra/v1"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tnvml "github.com/tessera-gpu/tessera/internal/nvml"
	"github.com/tessera-gpu/tessera/internal/plugin"
)

// fakePreparer answers each claim as its function fields say and records
// the calls; nil fields succeed with no devices.
type fakePreparer struct {
	mu         sync.Mutex
	prepare    func(*resourceapi.ResourceClaim) kubeletplugin.PrepareResult
	unprepare  func(kubeletplugin.NamespacedObject) error
	prepared   []string
	unprepared []string
}

func (f *fakePreparer) Prepare(_ context.Context, c *resourceapi.ResourceClaim) kubeletplugin.PrepareResult {
	f.mu.Lock()
	f.prepared = append(f.prepared, c.Name)
	f.mu.Unlock()
	if f.prepare != nil {
		return f.prepare(c)
	}
	return kubeletplugin.PrepareResult{Devices: []kubeletplugin.Device{}}
}

func (f *fakePreparer) Unprepare(_ context.Context, c kubeletplugin.NamespacedObject) error {
	f.mu.Lock()
	f.unprepared = append(f.unprepared, c.Name)
	f.mu.Unlock()
	if f.unprepare != nil {
		return f.unprepare(c)
	}
	return nil
}

func allocatedClaim(name string) *resourceapi.ResourceClaim {
	return &resourceapi.ResourceClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", UID: types.UID(name + "-uid")},
		Status: resourceapi.ResourceClaimStatus{Allocation: &resourceapi.AllocationResult{Devices: resourceapi.DeviceAllocationResult{
			Results: []resourceapi.DeviceRequestAllocationResult{{Request: "gpu", Driver: gpuapi.DriverName, Pool: "n1", Device: "gpu-0"}},
		}}},
	}
}

// TestDriverServesKubeletCallsPerClaim drives the plugin through the
// kubelet's own gRPC API: one claim's failure is reported in its own
// result and never fails the call or the other claims, and prepare results
// carry the preparer's CDI device IDs.
func TestDriverServesKubeletCallsPerClaim(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	client := fakeClient()
	good, bad := allocatedClaim("good"), allocatedClaim("bad")
	for _, c := range []*resourceapi.ResourceClaim{good, bad} {
		if _, err := client.ResourceV1().ResourceClaims(c.Namespace).Create(ctx, c, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	prep := &fakePreparer{
		prepare: func(c *resourceapi.ResourceClaim) kubeletplugin.PrepareResult {
			if c.Name == "bad" {
				return kubeletplugin.PrepareResult{Err: errors.New("bad opaque config")}
			}
			return kubeletplugin.PrepareResult{Devices: []kubeletplugin.Device{{Requests: []string{"gpu"}, PoolName: "n1", DeviceName: "gpu-0", CDIDeviceIDs: []string{"gpu.tessera.dev/claim=x"}}}}
		},
		unprepare: func(c kubeletplugin.NamespacedObject) error {
			if c.Name == "bad" {
				return errors.New("device busy")
			}
			return nil
		},
	}
	opts := runPlugin(t, ctx, plugin.Config{}, plugin.Components{KubeClient: client, Preparer: prep})
	conn := dial(t, filepath.Join(opts.PluginDataDir, "dra.sock"))
	dra := drapb.NewDRAPluginClient(conn)
	refs := []*drapb.Claim{
		{Namespace: "ns", Name: "good", Uid: "good-uid"},
		{Namespace: "ns", Name: "bad", Uid: "bad-uid"},
	}
	resp := prepareOnceServing(t, ctx, dra, refs)
	if r := resp.Claims["good-uid"]; r.GetError() != "" || len(r.GetDevices()) != 1 || !cmp.Equal([]string{"gpu.tessera.dev/claim=x"}, r.GetDevices()[0].CdiDeviceIds) {
		t.Errorf("good claim's result: %v", r)
	}
	if r := resp.Claims["bad-uid"]; r.GetError() == "" || !contains(r.GetError(), "bad opaque config") {
		t.Errorf("bad claim's result %v, want its own error", r)
	}

	uresp, err := dra.NodeUnprepareResources(ctx, &drapb.NodeUnprepareResourcesRequest{Claims: refs})
	if err != nil {
		t.Fatalf("NodeUnprepareResources: %v", err)
	}
	if r := uresp.Claims["good-uid"]; r.GetError() != "" {
		t.Errorf("good claim's unprepare: %v", r)
	}
	if r := uresp.Claims["bad-uid"]; !contains(r.GetError(), "device busy") {
		t.Errorf("bad claim's unprepare %v, want its own error", r)
	}
	prep.mu.Lock()
	defer prep.mu.Unlock()
	if diff := cmp.Diff([]string{"bad", "good"}, sorted(prep.prepared)); diff != "" {
		t.Errorf("prepared (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"bad", "good"}, sorted(prep.unprepared)); diff != "" {
		t.Errorf("unprepared (-want +got):\n%s", diff)
	}
}

// TestRunWithoutPreparerFails: a plugin that cannot prepare is a
// configuration error at start, not an error answered for every claim.
func TestRunWithoutPreparerFails(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	lib, err := tnvml.Open(tnvml.Backend{Mock: "dgxh200", Count: 1, Seed: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	inv, err := tnvml.DiscoverNode(ctx, lib)
	if err != nil {
		t.Fatal(err)
	}
	err = plugin.Run(ctx, plugin.Config{NodeName: "n1", PluginDataDir: t.TempDir(), RegistrarDir: t.TempDir()},
		plugin.Components{KubeClient: fakeClient(), NVML: lib, Inventory: inv})
	if err == nil || !contains(err.Error(), "no preparer") {
		t.Errorf("Run without preparer: %v", err)
	}
}
