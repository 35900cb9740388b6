package plugin_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/klog/v2/ktesting"
	drapb "k8s.io/kubelet/pkg/apis/dra/v1"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tnvml "github.com/tessera-gpu/tessera/internal/nvml"
	"github.com/tessera-gpu/tessera/internal/nvml/nvmlmock"
	"github.com/tessera-gpu/tessera/internal/plugin"
)

// TestRunNodeServesClaimMetrics: with claim metrics on, a claim prepared
// through the kubelet's API shows on /metrics with the pod it is reserved
// for and its GPU's utilization, and is gone from /metrics as soon as its
// unprepare returns.
func TestRunNodeServesClaimMetrics(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	client := fakeClient()
	claim := &resourceapi.ResourceClaim{
		ObjectMeta: metav1.ObjectMeta{Name: "whole", Namespace: "ns", UID: "whole-uid"},
		Status: resourceapi.ResourceClaimStatus{
			Allocation: &resourceapi.AllocationResult{Devices: resourceapi.DeviceAllocationResult{
				Results: []resourceapi.DeviceRequestAllocationResult{{Request: "gpu", Driver: gpuapi.DriverName, Pool: "n1", Device: "gpu-0"}},
			}},
			ReservedFor: []resourceapi.ResourceClaimConsumerReference{{Resource: "pods", Name: "trainer", UID: "pod-uid"}},
		},
	}
	if _, err := client.ResourceV1().ResourceClaims("ns").Create(ctx, claim, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	s, err := nvmlmock.New("dgxh200", 1, "n1")
	if err != nil {
		t.Fatal(err)
	}
	s.SetUtilization(0, 64, 0)
	lib, err := tnvml.OpenMock(s)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	_ = lis.Close()
	dirs := newNodeDirs(t)
	runUntilEnd(t, ctx, "RunNode", func(ctx context.Context) error {
		cfg := nodeConfig(dirs)
		cfg.MetricsAddress, cfg.ClaimMetricsInterval = addr, 20*time.Millisecond
		return plugin.RunNode(ctx, cfg, client, simulated(t, ctx, lib, dirs))
	})
	dra := drapb.NewDRAPluginClient(dial(t, filepath.Join(dirs.data, "dra.sock")))
	ref := []*drapb.Claim{{Namespace: "ns", Name: "whole", Uid: "whole-uid"}}
	if r := prepareOnceServing(t, ctx, dra, ref).Claims["whole-uid"]; r.GetError() != "" {
		t.Fatalf("prepare result: %v", r)
	}
	const series = `tessera_claim_gpu_utilization_ratio{claim="whole",device="gpu-0",gpu_instance="",gpu_uuid="`
	var body string
	if err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 10*time.Second, true, func(ctx context.Context) (bool, error) {
		body = scrapeMetrics(ctx, t, addr)
		return strings.Contains(body, series) && strings.Contains(body, `",namespace="ns",pod="trainer",profile="",request="gpu",type="gpu",uuid="`) &&
			strings.Contains(body, `"} 0.64`), nil
	}); err != nil {
		t.Fatalf("no utilization series of the claim on /metrics:\n%s", grepLines(body, "tessera_claim_gpu"))
	}
	if _, err := dra.NodeUnprepareResources(ctx, &drapb.NodeUnprepareResourcesRequest{Claims: ref}); err != nil {
		t.Fatal(err)
	}
	if body := scrapeMetrics(ctx, t, addr); strings.Contains(body, `claim="whole"`) {
		t.Errorf("series of the claim right after its unprepare:\n%s", grepLines(body, "tessera_claim_gpu"))
	}
}

func scrapeMetrics(ctx context.Context, t *testing.T, addr string) string {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "" // not serving yet
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func grepLines(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
