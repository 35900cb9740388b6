package plugin_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/klog/v2/ktesting"
	drapb "k8s.io/kubelet/pkg/apis/dra/v1"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/internal/checkpoint"
	tnvml "github.com/tessera-gpu/tessera/internal/nvml"
	"github.com/tessera-gpu/tessera/internal/plugin"
)

// nodeDirs are one simulated node's host directories.
type nodeDirs struct{ data, registrar, cdi, state string }

func newNodeDirs(t *testing.T) nodeDirs {
	return nodeDirs{data: t.TempDir(), registrar: t.TempDir(), cdi: t.TempDir(), state: t.TempDir()}
}

// runNode runs plugin.RunNode on a node of dirs with one mock H200 behind nvml
// (nil: the plain mock).
func runNode(t *testing.T, ctx context.Context, dirs nodeDirs, client *fake.Clientset, nvml tnvml.Library) error {
	if nvml == nil {
		nvml = mockH200s(t, 1)
	}
	return plugin.RunNode(ctx, plugin.Options{
		NodeName: "n1", KubeClient: client, NVML: nvml,
		PluginDataDir: dirs.data, RegistrarDir: dirs.registrar, RediscoverInterval: time.Hour,
	}, plugin.NodeOptions{CDIRoot: dirs.cdi, StateDir: dirs.state, HealthPort: -1, SimulatedDriver: true})
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
