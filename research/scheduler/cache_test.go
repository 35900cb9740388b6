package scheduler

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/dynamic-resource-allocation/structured"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/utils/ptr"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/pkg/placement"
)

// TestCacheFollowsChurn allocates and frees whole GPUs, shares and MIG
// partitions at random and binds pods (CPU and memory) on a mixed cluster,
// scoring a random pod after every change, and checks that the cached
// plugin's scores and each node's cached fragmentation equal a fresh
// computation's; with MIG claims modelled by first fit and by the
// placement choice (WithPlacementChoice).
func TestCacheFollowsChurn(t *testing.T) {
	const nodes, steps = 12, 400
	claims := map[string]*resourceapi.ResourceClaim{
		"ns/share30": shareClaim("share30", 30), "ns/share70": shareClaim("share70", 70),
		"ns/whole": classClaim("whole", gpuapi.ClassGPU, 1), "ns/whole2": classClaim("whole2", gpuapi.ClassGPU, 2),
		"ns/mig1g": migClaim("mig1g", 1, profileIs("1g.5gb")), "ns/mig3g": migClaim("mig3g", 1, profileIs("3g.20gb")),
		"ns/mig2": migClaim("mig2", 2), "ns/mig1": migClaim("mig1", 1),
	}
	pods := []string{"", "share30", "share70", "whole", "whole2", "mig1g", "mig3g", "mig2", "mig1"}
	for _, model := range []string{"first fit", "choice"} {
		var opts []Option
		if model == "choice" {
			opts = append(opts, WithPlacementChoice())
		}
		for seed := range uint64(3) {
			t.Run(fmt.Sprintf("model=%s/seed=%d", model, seed), func(t *testing.T) {
				churnScores(t, seed, nodes, steps, claims, pods, opts)
			})
		}
	}
}

// churnScores is one seed of TestCacheFollowsChurn.
func churnScores(t *testing.T, seed uint64, nodes, steps int, claims map[string]*resourceapi.ResourceClaim, pods []string, opts []Option) {
	rng := rand.New(rand.NewPCG(seed, 29))
	dra := &fakeDRA{claims: claims, allocated: emptyAllocated()}
	infos := make([]fakeNodeInfo, nodes)
	for n := range nodes {
		name := fmt.Sprintf("node-%02d", n)
		if n%2 == 0 {
			dra.slices = append(dra.slices, gpuNode(name, 4)...)
		} else {
			dra.slices = append(dra.slices, migNode(name, 4)...)
		}
		infos[n] = fakeNodeInfo{
			node:        &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}},
			allocatable: fakeResource{cpu: 16000, memory: 64 << 30},
			request:     fakeResource{cpu: 1000, memory: 1 << 30},
		}
	}
	cached, err := NewWithState(Args{}, dra, opts...)
	if err != nil {
		t.Fatal(err)
	}
	fresh, err := NewWithState(Args{}, dra, append(opts, WithoutFragmentationCache(), WithoutPlacementMemo())...)
	if err != nil {
		t.Fatal(err)
	}
	var devices []structured.DeviceID
	for _, s := range dra.slices {
		for _, d := range s.Spec.Devices {
			devices = append(devices, structured.MakeDeviceID(s.Spec.Driver, s.Spec.Pool.Name, d.Name))
		}
	}
	for step := range steps {
		churn(rng, dra.allocated, devices, infos)
		var list []fwk.NodeInfo
		for _, n := range infos {
			list = append(list, n)
		}
		sameScores(t, step, pods[rng.IntN(len(pods))], fresh, "cached", cached, list)
		checkCachedBase(t, cached, dra, infos)
	}
}

// churn makes one random change: a device allocated or freed (a share by
// its consumed compute), or a node's requested CPU and memory changed as
// when a pod binds or ends. It does not keep the state allocatable (a
// partition over a whole GPU); the cache must follow whatever it reads.
func churn(rng *rand.Rand, alloc *structured.AllocatedState, devices []structured.DeviceID, infos []fakeNodeInfo) {
	switch rng.IntN(4) {
	case 0:
		n := &infos[rng.IntN(len(infos))]
		n.request = fakeResource{cpu: rng.Int64N(16001), memory: rng.Int64N(64) << 30}
	case 1:
		id := devices[rng.IntN(len(devices))]
		if _, ok := alloc.AggregatedCapacity[id]; ok {
			delete(alloc.AggregatedCapacity, id)
		} else {
			alloc.AggregatedCapacity[id] = structured.ConsumedCapacity{
				gpuapi.CapCompute: ptr.To(*resource.NewQuantity(1+rng.Int64N(100), resource.DecimalSI))}
		}
	default:
		id := devices[rng.IntN(len(devices))]
		if alloc.AllocatedDevices.Has(id) {
			alloc.AllocatedDevices.Delete(id)
		} else {
			alloc.AllocatedDevices.Insert(id)
		}
	}
}

// checkCachedBase compares every node's cached fragmentation, and the
// snapshot it is keyed by, where the cache holds the node's current state,
// with ones computed afresh (snapshot: a look-up per device).
func checkCachedBase(t *testing.T, p *Plugin, dra *fakeDRA, infos []fakeNodeInfo) {
	t.Helper()
	index, _ := p.index.get(dra.slices)
	w := p.workload
	for _, info := range infos {
		g := index[info.node.Name]
		cpu, memory := info.allocatable.cpu-info.request.cpu, (info.allocatable.memory-info.request.memory)>>20
		snap := g.snapshot(dra.allocated)
		want := g.base(w, placement.Node{CPU: cpu, Memory: memory, Free: snap[:len(g.whole)]}, snap)
		g.cache.mu.Lock()
		valid, got, gotSnap := g.cache.valid, g.cache.base, g.cache.snap
		g.cache.mu.Unlock()
		if valid && !slices.Equal(gotSnap, snap) {
			t.Fatalf("node %s: cached snapshot %v, fresh %v", info.node.Name, gotSnap, snap)
		}
		if valid && got != want {
			t.Fatalf("node %s: cached fragmentation %v, fresh %v", info.node.Name, got, want)
		}
	}
}

// TestCacheParallelScore scores the nodes in parallel, as the framework
// does, twice for the same pod (the second time from the cache), and
// checks the scores against a fresh computation; with both models of the
// MIG placement, so that nodes in one state share the placement memo while
// they are scored at once; run with -race.
func TestCacheParallelScore(t *testing.T) {
	for _, model := range []string{"first fit", "choice"} {
		t.Run("model="+model, func(t *testing.T) {
			var opts []Option
			if model == "choice" {
				opts = append(opts, WithPlacementChoice())
			}
			parallelScores(t, opts)
		})
	}
}

func parallelScores(t *testing.T, opts []Option) {
	dra := &fakeDRA{claims: map[string]*resourceapi.ResourceClaim{"ns/mig1g": migClaim("mig1g", 1, profileIs("1g.5gb"))}, allocated: emptyAllocated()}
	var list []fwk.NodeInfo
	for n := range 16 {
		name := fmt.Sprintf("node-%02d", n)
		dra.slices = append(dra.slices, migNode(name, 2)...)
		if n%3 == 0 {
			dra.allocated.AllocatedDevices.Insert(structured.MakeDeviceID(gpuapi.DriverName, name, gpuapi.MIGDeviceName(0, "1g.5gb", n%7)))
		}
		list = append(list, nodeInfos(name)...)
	}
	cached, err := NewWithState(Args{}, dra, opts...)
	if err != nil {
		t.Fatal(err)
	}
	fresh, err := NewWithState(Args{}, dra, append(opts, WithoutFragmentationCache(), WithoutPlacementMemo())...)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := scoreAll(t, fresh, "mig1g", list)
	pod := podWithClaim("mig1g")
	for round := range 2 {
		state := &fakeCycleState{data: map[fwk.StateKey]fwk.StateData{}}
		if st := cached.PreScore(context.Background(), state, pod, list); !st.IsSuccess() {
			t.Fatal(st)
		}
		got := make(fwk.NodeScoreList, len(list))
		var wg sync.WaitGroup
		for i, n := range list {
			wg.Go(func() {
				s, _ := cached.Score(context.Background(), state, pod, n)
				got[i] = fwk.NodeScore{Name: n.Node().Name, Score: s}
			})
		}
		wg.Wait()
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("round %d: scores (-fresh +cached):\n%s", round, diff)
		}
	}
}

// TestCacheHitAllocatesNothing: scoring a node again in the state it was
// scored in reads the cache and allocates nothing (a snapshot buffer per
// node per pod was most of a MIG pod's allocations at 1,000 nodes, and the
// collector's work with them).
func TestCacheHitAllocatesNothing(t *testing.T) {
	dra := &fakeDRA{claims: map[string]*resourceapi.ResourceClaim{"ns/mig1g": migClaim("mig1g", 1, profileIs("1g.5gb"))}, allocated: emptyAllocated()}
	dra.slices = migNode("n", 2)
	dra.allocated.AllocatedDevices.Insert(structured.MakeDeviceID(gpuapi.DriverName, "n", gpuapi.MIGDeviceName(0, "1g.5gb", 3)))
	p, err := NewWithState(Args{}, dra, WithPlacementChoice())
	if err != nil {
		t.Fatal(err)
	}
	var info fwk.NodeInfo = boxedNodeInfo{node: &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n"}},
		allocatable: fakeResource{cpu: 32000, memory: 64 << 30}, requested: fakeResource{cpu: 1000, memory: 1 << 30}}
	ctx, pod := context.Background(), podWithClaim("mig1g")
	state := &fakeCycleState{data: map[fwk.StateKey]fwk.StateData{}}
	if st := p.PreScore(ctx, state, pod, []fwk.NodeInfo{info}); !st.IsSuccess() {
		t.Fatal(st)
	}
	want, _ := p.Score(ctx, state, pod, info)
	var got int64
	if allocs := testing.AllocsPerRun(10, func() { got, _ = p.Score(ctx, state, pod, info) }); allocs != 0 {
		t.Errorf("a cached score allocates %v times, want none", allocs)
	}
	if got != want {
		t.Errorf("cached score %d, first %d", got, want)
	}
}

// boxedNodeInfo is fakeNodeInfo with its resources already in interfaces,
// so that reading them allocates nothing.
type boxedNodeInfo struct {
	fwk.NodeInfo
	node                   *corev1.Node
	allocatable, requested fwk.Resource
}

func (n boxedNodeInfo) Node() *corev1.Node           { return n.node }
func (n boxedNodeInfo) GetAllocatable() fwk.Resource { return n.allocatable }
func (n boxedNodeInfo) GetRequested() fwk.Resource   { return n.requested }

// sameScores fails the test unless plugin (the one named name) scores claim on
// nodes as fresh does, status and scores.
func sameScores(t *testing.T, step int, claim string, fresh *Plugin, name string, plugin *Plugin, nodes []fwk.NodeInfo) {
	t.Helper()
	want, st := scoreAll(t, fresh, claim, nodes)
	got, gotSt := scoreAll(t, plugin, claim, nodes)
	if st.Code() != gotSt.Code() {
		t.Fatalf("step %d, pod %q: status %v, fresh %v", step, claim, gotSt, st)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("step %d, pod %q: scores (-fresh +%s):\n%s", step, claim, name, diff)
	}
}
