package claimusage_test

import (
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"
	"k8s.io/klog/v2/ktesting"

	"github.com/tessera-gpu/tessera/internal/claimusage"
	"github.com/tessera-gpu/tessera/internal/nvml/nvmlmock"
	"github.com/tessera-gpu/tessera/internal/pidns"
	"github.com/tessera-gpu/tessera/internal/testing/hostproc"
)

// TestSharesOfAPluginInItsOwnPIDNamespace: NVML lists host PIDs; a plugin
// in a PID namespace of its own sees its MPS server under another PID.
// The server, host PID 5007 and PID 7 in the plugin's namespace, counts
// for its claim; a container's process whose host PID is 7, the server's
// PID in the plugin's namespace, counts for nobody; neither does a
// process that is gone by the time its PID is translated.
func TestSharesOfAPluginInItsOwnPIDNamespace(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	host := hostproc.NewFakeHostProc(t)
	host.Add(t, 5007, hostproc.PluginNS, 5007, 7)
	host.Add(t, 7, hostproc.ContainerNS, 7, 1)
	pids, err := pidns.New(host.Root, pidns.WithSelfNamespace(host.Self))
	if err != nil {
		t.Fatal(err)
	}
	n := newNode(t, ctx, "dgxh200", 4, claimusage.WithHostPIDs(pids))
	n.prepare(t, ctx, claim("a").Share("s", "gpu-2-shared", "20Gi", "30", "share-a").ReservedFor("pod-a", "pa").Obj())
	inv, err := n.lib.Discover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	gpu2 := inv.GPUs[2].UUID

	n.mps.SetProcesses("a", 7)
	n.server.SetProcesses(2,
		nvmlmock.Process{PID: 5007, MemoryUsedBytes: 5 * gib, SMUtilPercent: 30},
		nvmlmock.Process{PID: 7, MemoryUsedBytes: 3 * gib, SMUtilPercent: 20},
		nvmlmock.Process{PID: 8000, MemoryUsedBytes: 1 * gib, SMUtilPercent: 10})
	if err := n.sampler.Sample(ctx); err != nil {
		t.Fatal(err)
	}
	sa := fmt.Sprintf("{ns-a/claim-a pod=pod-a s gpu-2-shared share uuid=%s profile= gpu=%[1]s/}", gpu2)
	want := map[string]float64{"utilization_ratio" + sa: 0.30, "memory_used_bytes" + sa: 5 * gib, "memory_limit_bytes" + sa: 20 * gib}
	if diff := cmp.Diff(want, n.scrape(t), approx); diff != "" {
		t.Errorf("series (-want +got):\n%s", diff)
	}
}
