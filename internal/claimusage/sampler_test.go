package claimusage_test

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/klog/v2/ktesting"

	"github.com/tessera-gpu/tessera/internal/claimusage"
	"github.com/tessera-gpu/tessera/internal/hardware"
	tnvml "github.com/tessera-gpu/tessera/internal/nvml"
	"github.com/tessera-gpu/tessera/internal/nvml/nvmlmock"
	"github.com/tessera-gpu/tessera/internal/prepare"
	"github.com/tessera-gpu/tessera/internal/sharing"
	"github.com/tessera-gpu/tessera/internal/testing/builder"
)

const nodeName = "node-1"

// node is one simulated node: a mock NVML server, a Preparer on it with a
// fake MPS control, and a sampler of its claims.
type node struct {
	server   *nvmlmock.Server
	lib      tnvml.Library
	mps      *hardware.SimulatedMPS
	preparer *prepare.Preparer
	sampler  *claimusage.Sampler
	registry *prometheus.Registry
}

func newNode(t testing.TB, ctx context.Context, model string, gpus int, opts ...claimusage.Option) *node {
	t.Helper()
	s, err := nvmlmock.New(model, gpus, "claimusage")
	if err != nil {
		t.Fatal(err)
	}
	lib, err := tnvml.OpenMock(s)
	if err != nil {
		t.Fatal(err)
	}
	state := t.TempDir()
	n := &node{server: s, lib: lib, mps: hardware.NewSimulatedMPS(sharing.MPSRoot(state)), registry: prometheus.NewPedanticRegistry()}
	hw := hardware.Simulated(ctx, lib, hardware.Config{ProcRoot: t.TempDir(), StateDir: state})
	hw.MPS = n.mps
	inv, err := tnvml.DiscoverNode(ctx, lib)
	if err != nil {
		t.Fatal(err)
	}
	n.preparer, err = prepare.New(ctx, prepare.WithHardware(hw), prepare.WithInventory(inv), prepare.WithNodeName(nodeName),
		prepare.WithCDIRoot(t.TempDir()), prepare.WithStateDir(state))
	if err != nil {
		t.Fatal(err)
	}
	n.sampler = claimusage.New(n.preparer, lib.(tnvml.Telemetry), opts...)
	n.registry.MustRegister(n.sampler)
	return n
}

// prepare prepares a claim as the plugin does: the sampler learns its pods.
func (n *node) prepare(t testing.TB, ctx context.Context, c *resourceapi.ResourceClaim) {
	t.Helper()
	if res := n.preparer.Prepare(ctx, c); res.Err != nil {
		t.Fatal(res.Err)
	}
	n.sampler.Prepared(c)
}

func (n *node) unprepare(t testing.TB, ctx context.Context, c *resourceapi.ResourceClaim) {
	t.Helper()
	ref := kubeletplugin.NamespacedObject{NamespacedName: types.NamespacedName{Namespace: c.Namespace, Name: c.Name}, UID: c.UID}
	if err := n.preparer.Unprepare(ctx, ref); err != nil {
		t.Fatal(err)
	}
}

// gpuInstance returns the GPU instance ID the claim's MIG device got.
func (n *node) gpuInstance(t testing.TB, uid string) int {
	t.Helper()
	for _, c := range n.preparer.PreparedClaims() {
		if c.UID == uid && c.Devices[0].MIG != nil {
			return c.Devices[0].MIG.GPUInstanceID
		}
	}
	t.Fatalf("claim %s has no MIG device", uid)
	return 0
}

// scrape returns every tessera_claim_gpu_* series as
// "name{claim,pod,type,uuid,profile,device,request,namespace}" → value.
func (n *node) scrape(t testing.TB) map[string]float64 {
	t.Helper()
	mfs, err := n.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			key := fmt.Sprintf("%s{%s/%s pod=%s %s %s %s uuid=%s profile=%s gpu=%s/%s}", strings.TrimPrefix(mf.GetName(), "tessera_claim_gpu_"),
				labels["namespace"], labels["claim"], labels["pod"], labels["request"], labels["device"], labels["type"], labels["uuid"], labels["profile"],
				labels["gpu_uuid"], labels["gpu_instance"])
			v := m.GetGauge().GetValue()
			if m.GetCounter() != nil {
				v = m.GetCounter().GetValue()
			}
			out[key] = v
		}
	}
	return out
}

func claim(uid string) *builder.ClaimBuilder {
	return builder.MakeClaim("claim-" + uid).Namespace("ns-" + uid).UID(uid).Pool(nodeName).Allocated()
}

const gib = 1 << 30

// TestSharesOfOneGPUEachShowTheirOwn: two claims hold MPS shares of one
// GPU, each with its own processes (and a process on the GPU that no
// claim's daemon runs): each claim's series hold its own processes' memory
// and utilization only, with its own limit, labelled with each of its
// pods. A whole GPU and a MIG instance show the device's and the
// instance's readings. Series go with the claim's unprepare.
func TestSharesOfOneGPUEachShowTheirOwn(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	n := newNode(t, ctx, "dgxh200", 4)
	a := claim("a").Share("s", "gpu-2-shared", "20Gi", "30", "share-a").ReservedFor("pod-a", "pa").Obj()
	b := claim("b").Share("s", "gpu-2-shared", "40Gi", "50", "share-b").ReservedFor("pod-b1", "pb1").ReservedFor("pod-b2", "pb2").Obj()
	w := claim("w").Device("g", "gpu-0").ReservedFor("pod-w", "pw").Obj()
	m := claim("m").Device("m", "gpu-1-mig-1g18gb-0").ReservedFor("pod-m", "pm").Obj()
	for _, c := range []*resourceapi.ResourceClaim{a, b, w, m} {
		n.prepare(t, ctx, c)
	}
	inv, err := n.lib.Discover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	gpu0, gpu2 := inv.GPUs[0].UUID, inv.GPUs[2].UUID
	var migUUID string
	var migBytes float64
	for _, c := range n.preparer.PreparedClaims() {
		if c.UID == "m" {
			migUUID = c.Devices[0].MIG.UUID
		}
	}
	for _, p := range inv.GPUs[1].MIG.Profiles {
		if p.Name == "1g.18gb" {
			migBytes = float64(p.MemoryBytes)
		}
	}

	// Claim a's daemon runs process 100, b's 200 and 201; 999 runs on
	// the GPU under no claim's daemon.
	n.mps.SetProcesses("a", 100)
	n.mps.SetProcesses("b", 200, 201)
	busy := func() {
		n.server.SetProcesses(2,
			nvmlmock.Process{PID: 100, MemoryUsedBytes: 5 * gib, SMUtilPercent: 30},
			nvmlmock.Process{PID: 200, MemoryUsedBytes: 8 * gib, SMUtilPercent: 45},
			nvmlmock.Process{PID: 201, MemoryUsedBytes: 1 * gib, SMUtilPercent: 10},
			nvmlmock.Process{PID: 999, MemoryUsedBytes: 3 * gib, SMUtilPercent: 5})
	}
	busy()
	n.server.SetUtilization(0, 80, 20)
	n.server.SetMemoryUsed(0, 60*gib)
	n.server.AddEnergy(0, 1000)
	n.server.SetMIGActivity(1, n.gpuInstance(t, "m"), nvmlmock.MIGActivity{UtilPercent: 40, MemoryUsedBytes: 6 * gib})
	if err := n.sampler.Sample(ctx); err != nil {
		t.Fatal(err)
	}
	// The GPU takes new samples; the MIG rate needs a second GPM sample;
	// the whole GPU uses 2.5 J.
	busy()
	n.server.AddEnergy(0, 2500)
	if err := n.sampler.Sample(ctx); err != nil {
		t.Fatal(err)
	}

	sa := fmt.Sprintf("{ns-a/claim-a pod=pod-a s gpu-2-shared share uuid=%s profile= gpu=%[1]s/}", gpu2)
	sb1 := fmt.Sprintf("{ns-b/claim-b pod=pod-b1 s gpu-2-shared share uuid=%s profile= gpu=%[1]s/}", gpu2)
	sb2 := fmt.Sprintf("{ns-b/claim-b pod=pod-b2 s gpu-2-shared share uuid=%s profile= gpu=%[1]s/}", gpu2)
	sw := fmt.Sprintf("{ns-w/claim-w pod=pod-w g gpu-0 gpu uuid=%s profile= gpu=%[1]s/}", gpu0)
	sm := fmt.Sprintf("{ns-m/claim-m pod=pod-m m gpu-1-mig-1g18gb-0 mig uuid=%s profile=1g.18gb gpu=%s/%d}", migUUID, inv.GPUs[1].UUID, n.gpuInstance(t, "m"))
	wholeBytes := float64(inv.GPUs[0].MemoryBytes)
	want := map[string]float64{
		"utilization_ratio" + sa: 0.30, "memory_used_bytes" + sa: 5 * gib, "memory_limit_bytes" + sa: 20 * gib,
		"utilization_ratio" + sb1: 0.55, "memory_used_bytes" + sb1: 9 * gib, "memory_limit_bytes" + sb1: 40 * gib,
		"utilization_ratio" + sb2: 0.55, "memory_used_bytes" + sb2: 9 * gib, "memory_limit_bytes" + sb2: 40 * gib,
		"utilization_ratio" + sw: 0.80, "memory_used_bytes" + sw: 60 * gib, "memory_limit_bytes" + sw: wholeBytes, "energy_joules_total" + sw: 2.5,
		"utilization_ratio" + sm: 0.40, "memory_used_bytes" + sm: 6 * gib, "memory_limit_bytes" + sm: migBytes,
	}
	if diff := cmp.Diff(want, n.scrape(t), approx); diff != "" {
		t.Errorf("series (-want +got):\n%s", diff)
	}

	// Unprepare drops a claim's series at once (the plugin calls Forget);
	// a sample drops those of any claim no longer prepared.
	n.unprepare(t, ctx, a)
	n.sampler.Forget("a")
	for key := range want {
		if strings.Contains(key, "ns-a/") {
			delete(want, key)
		}
	}
	if diff := cmp.Diff(want, n.scrape(t), approx); diff != "" {
		t.Errorf("after unpreparing a (-want +got):\n%s", diff)
	}
	n.unprepare(t, ctx, b)
	n.unprepare(t, ctx, w)
	n.unprepare(t, ctx, m)
	if err := n.sampler.Sample(ctx); err != nil {
		t.Fatal(err)
	}
	if got := n.scrape(t); len(got) != 0 {
		t.Errorf("series after every claim was unprepared: %v", keys(got))
	}
}

var approx = cmp.Comparer(func(x, y float64) bool {
	d := x - y
	return d < 1e-9 && d > -1e-9
})

func keys(m map[string]float64) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
