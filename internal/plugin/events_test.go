package plugin_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	eventsv1 "k8s.io/api/events/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/klog/v2/ktesting"
	drapb "k8s.io/kubelet/pkg/apis/dra/v1"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tnvml "github.com/tessera-gpu/tessera/internal/nvml"
	"github.com/tessera-gpu/tessera/internal/plugin"
	"github.com/tessera-gpu/tessera/internal/prepare"
)

// inUseInstances refuses every MIG destroy, as NVML does while a process
// holds the instance (nvml.h, nvmlGpuInstanceDestroy: "NVML_ERROR_IN_USE If
// the GPU instance is in use").
type inUseInstances struct{ tnvml.Library }

func (inUseInstances) DestroyMIGDevice(context.Context, int, int) error {
	return errors.New("destroy GPU instance: In use by another client")
}

// TestRunNodeRecordsNodeEvents: an unprepare whose MIG instance will not go
// completes, and the plugin records a Warning Event about its own Node
// through events.k8s.io/v1.
func TestRunNodeRecordsNodeEvents(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	client := fakeClient()
	claim := &resourceapi.ResourceClaim{
		ObjectMeta: metav1.ObjectMeta{Name: "mig", Namespace: "ns", UID: "mig-uid"},
		Status: resourceapi.ResourceClaimStatus{Allocation: &resourceapi.AllocationResult{Devices: resourceapi.DeviceAllocationResult{
			Results: []resourceapi.DeviceRequestAllocationResult{{Request: "mig", Driver: gpuapi.DriverName, Pool: "n1", Device: "gpu-0-mig-1g18gb-0"}},
		}}},
	}
	if _, err := client.ResourceV1().ResourceClaims("ns").Create(ctx, claim, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	dirs := newNodeDirs(t)
	runUntilEnd(t, ctx, "RunNode", func(ctx context.Context) error {
		return runNode(t, ctx, dirs, client, inUseInstances{mockH200s(t, 1)})
	})
	dra := drapb.NewDRAPluginClient(dial(t, filepath.Join(dirs.data, "dra.sock")))
	ref := []*drapb.Claim{{Namespace: "ns", Name: "mig", Uid: "mig-uid"}}
	if r := prepareOnceServing(t, ctx, dra, ref).Claims["mig-uid"]; r.GetError() != "" {
		t.Fatalf("prepare result: %v", r)
	}
	resp, err := dra.NodeUnprepareResources(ctx, &drapb.NodeUnprepareResourcesRequest{Claims: ref})
	if err != nil || resp.Claims["mig-uid"].GetError() != "" {
		t.Fatalf("unprepare with an instance in use: %v, %v", err, resp)
	}
	var got *eventsv1.Event
	err = wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		list, err := client.EventsV1().Events(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		for i, e := range list.Items {
			if e.Reason == prepare.ReasonMIGDestroyDeferred {
				got = &list.Items[i]
			}
		}
		return got != nil, nil
	})
	if err != nil {
		t.Fatalf("no %s Event: %v", prepare.ReasonMIGDestroyDeferred, err)
	}
	if got.Type != "Warning" || got.Regarding.Kind != "Node" || got.Regarding.Name != "n1" ||
		got.ReportingController != plugin.EventsReportingController || got.Action == "" {
		t.Errorf("Event %+v: want a Warning about Node n1 from %s with an action", got, plugin.EventsReportingController)
	}
}
