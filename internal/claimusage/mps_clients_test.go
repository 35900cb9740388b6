package claimusage_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/klog/v2/ktesting"

	"github.com/tessera-gpu/tessera/internal/nvml/nvmlmock"
)

// TestSharesShowTheirMockMPSClients: two MPS shares of one GPU whose
// processes are, in the mock, clients of each share's own daemon (as the
// local cluster's telemetry file sets them): each share's series hold its
// own clients' memory and utilization, through the plugin's attribution
// of NVML's processes to daemons; a process that is no daemon's client
// counts for no share. A client the mock gives to a daemon that does not
// run fails the sample, naming it, and leaves the shares' usage out rather
// than showing it as 0.
func TestSharesShowTheirMockMPSClients(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	n := newNode(t, ctx, "dgxh200", 4)
	n.mps.Clients = n.server.MPSClients
	a := claim("a").Share("s", "gpu-2-shared", "20Gi", "30", "share-a").ReservedFor("pod-a", "pa").Obj()
	b := claim("b").Share("s", "gpu-2-shared", "8Gi", "50", "share-b").ReservedFor("pod-b", "pb").Obj()
	for _, c := range []*resourceapi.ResourceClaim{a, b} {
		n.prepare(t, ctx, c)
	}
	inv, err := n.lib.Discover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	gpu2 := inv.GPUs[2].UUID
	n.server.SetProcesses(2,
		nvmlmock.Process{PID: 100, MemoryUsedBytes: 5 * gib, SMUtilPercent: 30, MPSDaemon: "a"},
		nvmlmock.Process{PID: 200, MemoryUsedBytes: 2 * gib, SMUtilPercent: 35, MPSDaemon: "b"},
		nvmlmock.Process{PID: 201, MemoryUsedBytes: 1 * gib, SMUtilPercent: 10, MPSDaemon: "b"},
		nvmlmock.Process{PID: 999, MemoryUsedBytes: 3 * gib, SMUtilPercent: 5})
	if err := n.sampler.Sample(ctx); err != nil {
		t.Fatal(err)
	}
	sa := fmt.Sprintf("{ns-a/claim-a pod=pod-a s gpu-2-shared share uuid=%s profile= gpu=%[1]s/}", gpu2)
	sb := fmt.Sprintf("{ns-b/claim-b pod=pod-b s gpu-2-shared share uuid=%s profile= gpu=%[1]s/}", gpu2)
	want := map[string]float64{
		"utilization_ratio" + sa: 0.30, "memory_used_bytes" + sa: 5 * gib, "memory_limit_bytes" + sa: 20 * gib,
		"utilization_ratio" + sb: 0.45, "memory_used_bytes" + sb: 3 * gib, "memory_limit_bytes" + sb: 8 * gib,
	}
	if diff := cmp.Diff(want, n.scrape(t), approx); diff != "" {
		t.Errorf("series (-want +got):\n%s", diff)
	}

	n.server.SetProcesses(2, nvmlmock.Process{PID: 300, SMUtilPercent: 50, MPSDaemon: "gone"})
	err = n.sampler.Sample(ctx)
	if err == nil || !strings.Contains(err.Error(), `MPS daemon "gone", which does not run`) {
		t.Errorf("a client of a daemon that does not run: err %v, want one naming it", err)
	}
	want = map[string]float64{"memory_limit_bytes" + sa: 20 * gib, "memory_limit_bytes" + sb: 8 * gib}
	if diff := cmp.Diff(want, n.scrape(t), approx); diff != "" {
		t.Errorf("series after the bad sample (-want +got):\n%s", diff)
	}
}
