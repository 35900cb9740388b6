package scheduler

import (
	"context"
	"fmt"
	"maps"
	"testing"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	draslices "k8s.io/dynamic-resource-allocation/resourceslice"
	"k8s.io/dynamic-resource-allocation/structured"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/utils/ptr"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tnvml "github.com/tessera-gpu/tessera/internal/nvml"
	"github.com/tessera-gpu/tessera/internal/nvml/nvmlmock"
	"github.com/tessera-gpu/tessera/pkg/inventory"
	"github.com/tessera-gpu/tessera/pkg/partition"
	"github.com/tessera-gpu/tessera/pkg/partition/partitiontest"
	"github.com/tessera-gpu/tessera/pkg/resourceslice"
)

// BenchmarkScoreCycle measures one pod's scoring cycle: PreScore (list the
// slices, index them by node, read the allocated state), Score on every node
// and NormalizeScore, on nodes of 8 GPUs with a share on every other GPU;
// with the fragmentation cache off (the cost before it) and on, and with
// the allocations of none or a tenth of the nodes changed before each pod
// (those nodes miss the cache).
//
//	go test -run '^$' -bench ScoreCycle -benchtime 100x ./research/scheduler/
func BenchmarkScoreCycle(b *testing.B) {
	for _, nodes := range []int{100, 1000} {
		for _, changed := range []int{0, 10} {
			for _, cache := range []string{"off", "on"} {
				b.Run(fmt.Sprintf("nodes=%d/changed=%d%%/cache=%s", nodes, changed, cache), func(b *testing.B) {
					var opts []Option
					if cache == "off" {
						opts = append(opts, WithoutFragmentationCache())
					}
					benchmarkScoreCycle(b, nodes, nodes*changed/100, opts...)
				})
			}
		}
	}
}

func benchmarkScoreCycle(b *testing.B, nodes, changed int, opts ...Option) {
	dra := &fakeDRA{claims: map[string]*resourceapi.ResourceClaim{"ns/half": shareClaim("half", 50)}, allocated: emptyAllocated()}
	var infos []fwk.NodeInfo
	for n := range nodes {
		name := fmt.Sprintf("node-%04d", n)
		dra.slices = append(dra.slices, gpuNode(name, 8)...)
		for g := 0; g < 8; g += 2 {
			id := structured.MakeDeviceID(gpuapi.DriverName, name, gpuapi.SharedDeviceName(g))
			dra.allocated.AggregatedCapacity[id] = structured.ConsumedCapacity{gpuapi.CapCompute: ptr.To(resource.MustParse("30"))}
		}
		infos = append(infos, fakeNodeInfo{
			node:        &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}},
			allocatable: fakeResource{cpu: 64000, memory: 256 << 30},
			request:     fakeResource{cpu: int64(n % 64000), memory: 1 << 30},
		})
	}
	p, err := NewWithState(Args{}, dra, opts...)
	if err != nil {
		b.Fatal(err)
	}
	// Each pod, a share on GPU 1 of the next nodes comes or goes.
	next := 0
	runScoreCycles(b, p, podWithClaim("half"), infos, func() {
		for range changed {
			id := structured.MakeDeviceID(gpuapi.DriverName, infos[next%nodes].Node().Name, gpuapi.SharedDeviceName(1))
			if _, ok := dra.allocated.AggregatedCapacity[id]; ok {
				delete(dra.allocated.AggregatedCapacity, id)
			} else {
				dra.allocated.AggregatedCapacity[id] = structured.ConsumedCapacity{gpuapi.CapCompute: ptr.To(resource.MustParse("20"))}
			}
			next++
		}
	})
}

// BenchmarkScoreCycleMIG is BenchmarkScoreCycle for a MIG claim of one
// 1g.18gb partition on nodes of 8 H200 GPUs as Tessera publishes them (216
// devices), each node with a 3g partition on memory slices 4-7 of GPU 0 and
// a 1g partition at slice 6 of GPU 1, so that first fit (GPU 0's free 1g at
// slice 6... or wherever the published order puts it) and the placement
// choice take different partitions. It runs both models of the allocator's
// choice (model=first-fit, the plugin before; model=choice,
// WithPlacementChoice) side by side, with the cache off and on, the
// placement memo off (WithoutPlacementMemo) and on, for the choice with
// partition.BestFit over the devices prepared once per layout
// (rule=prepared), weighed by a demand that has seen the H200's seven
// profiles alike (rule=weighted, WithDemand, as tessera-scheduler runs it),
// and as it was first written, over maps (rule=maps, mapBestFit), and with
// a 1g partition on GPU 2 coming or going on none or a tenth of the nodes
// before each pod.
//
//	go test -run '^$' -bench ScoreCycleMIG -benchtime 100x ./research/scheduler/
func BenchmarkScoreCycleMIG(b *testing.B) {
	// Built once (partition.Build is costly), published under each node's name.
	pool := resourceslice.Build("template", h200Inventory(b), resourceslice.Options{Pool: "default"}).Pools["template"]
	for _, nodes := range []int{100, 1000} {
		dra := &fakeDRA{claims: map[string]*resourceapi.ResourceClaim{"ns/one": migClaim("one", 1, profileIs("1g.18gb"))}, allocated: emptyAllocated()}
		var infos []fwk.NodeInfo
		// The partition that comes and goes, named once per node: the
		// scheduler does not pay for formatting device names.
		var toggled []structured.DeviceID
		for n := range nodes {
			name := fmt.Sprintf("node-%04d", n)
			toggled = append(toggled, structured.MakeDeviceID(gpuapi.DriverName, name, gpuapi.MIGDeviceName(2, "1g.18gb", 6)))
			dra.slices = append(dra.slices, resourceslice.Objects(name, draslices.DriverResources{Pools: map[string]draslices.Pool{name: pool}})...)
			dra.allocated.AllocatedDevices.Insert(
				structured.MakeDeviceID(gpuapi.DriverName, name, gpuapi.MIGDeviceName(0, "3g.71gb", 4)),
				structured.MakeDeviceID(gpuapi.DriverName, name, gpuapi.MIGDeviceName(1, "1g.18gb", 6)))
			infos = append(infos, fakeNodeInfo{
				node:        &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}},
				allocatable: fakeResource{cpu: 64000, memory: 256 << 30},
				request:     fakeResource{cpu: int64(n % 64000), memory: 1 << 30},
			})
		}
		for _, changed := range []int{0, 10} {
			for _, cache := range []string{"off", "on"} {
				for _, model := range []string{"first-fit", "choice/rule=maps", "choice/rule=prepared", "choice/rule=weighted"} {
					for _, memo := range []string{"off", "on"} {
						b.Run(fmt.Sprintf("nodes=%d/changed=%d%%/cache=%s/model=%s/memo=%s", nodes, changed, cache, model, memo), func(b *testing.B) {
							var opts []Option
							if cache == "off" {
								opts = append(opts, WithoutFragmentationCache())
							}
							switch model {
							case "choice/rule=maps":
								opts = append(opts, func(p *Plugin) { p.choice = mapBestFit })
							case "choice/rule=prepared":
								opts = append(opts, WithPlacementChoice())
							case "choice/rule=weighted":
								opts = append(opts, WithPlacementChoice(), WithDemand(uniformDemand()))
							}
							if memo == "off" {
								opts = append(opts, WithoutPlacementMemo())
							}
							p, err := NewWithState(Args{}, dra, opts...)
							if err != nil {
								b.Fatal(err)
							}
							next := 0
							runScoreCycles(b, p, podWithClaim("one"), infos, func() {
								for range nodes * changed / 100 {
									id := toggled[next%nodes]
									if dra.allocated.AllocatedDevices.Has(id) {
										dra.allocated.AllocatedDevices.Delete(id)
									} else {
										dra.allocated.AllocatedDevices.Insert(id)
									}
									next++
								}
							})
						})
					}
				}
			}
		}
	}
}

// h200Inventory is a node of 8 H200 GPUs as the mock NVML discovers it.
func h200Inventory(b testing.TB) inventory.Node {
	s, err := nvmlmock.New("dgxh200", 8, "bench")
	if err != nil {
		b.Fatal(err)
	}
	lib, err := tnvml.OpenMock(s)
	if err != nil {
		b.Fatal(err)
	}
	inv, err := lib.Discover(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	inv.DriverVersion, inv.CUDADriverVersion = "550.54.15", "12.4"
	for i := range inv.GPUs {
		// Published MIG placements need MIG mode on or switchable.
		inv.GPUs[i].MIG.Enabled = true
	}
	return inv
}

// runScoreCycles runs one pod's scoring cycle per iteration, change() first.
// The first cycle, untimed, builds the slice index (and fills the cache):
// the steady state between slice changes.
func runScoreCycles(b *testing.B, p *Plugin, pod *corev1.Pod, infos []fwk.NodeInfo, change func()) {
	ctx := context.Background()
	scores := make(fwk.NodeScoreList, len(infos))
	for i := 0; i == 0 || b.Loop(); i++ {
		change()
		state := &fakeCycleState{data: map[fwk.StateKey]fwk.StateData{}}
		if st := p.PreScore(ctx, state, pod, infos); !st.IsSuccess() {
			b.Fatal(st)
		}
		for i, n := range infos {
			s, st := p.Score(ctx, state, pod, n)
			if !st.IsSuccess() {
				b.Fatal(st)
			}
			scores[i] = fwk.NodeScore{Name: n.Node().Name, Score: s}
		}
		p.NormalizeScore(ctx, state, pod, scores)
	}
}

// BenchmarkSliceIndexRebuild is PreScore's index of the slices on 1,000 nodes
// of 8 H200 GPUs when one slice object was replaced since the last pod (a
// publication, e.g. a prepare with blocked devices withdrawn): only that
// slice's node is indexed again.
//
//	go test -run '^$' -bench SliceIndexRebuild -benchtime 5x ./research/scheduler/
func BenchmarkSliceIndexRebuild(b *testing.B) {
	pool := resourceslice.Build("template", h200Inventory(b), resourceslice.Options{Pool: "default"}).Pools["template"]
	var all []*resourceapi.ResourceSlice
	for n := range 1000 {
		name := fmt.Sprintf("node-%04d", n)
		all = append(all, resourceslice.Objects(name, draslices.DriverResources{Pools: map[string]draslices.Pool{name: pool}})...)
	}
	var index sliceIndex
	index.get(all)
	b.ReportAllocs()
	for b.Loop() {
		replaced := *all[0]
		all[0] = &replaced
		index.get(all)
	}
}

// mapBestFit is the choice's rule with partition.BestFit as it was first
// written, looking every counter up in maps for every pair of devices (the
// same ranking: TestBestFitMatchesMapRule in pkg/partition), on what is
// left of the node's counters as it was worked out, in maps
// (countersLeftMaps): the baseline of BenchmarkScoreCycleMIG's
// rule=prepared.
func mapBestFit(n *nodeGPUs, snap []int, _ partition.Left, candidates []int) int {
	return partitiontest.BestFitMaps(n.choices, countersLeftMaps(n, snap), candidates)[0]
}

// countersLeftMaps is what is left of each of the node's counter sets in
// the snapshot's state, in maps, as the MIG model worked it out before the
// devices were prepared (partition.Prepare).
func countersLeftMaps(n *nodeGPUs, snap []int) map[string]map[string]int64 {
	blocked, busy := snap[len(n.whole):2*len(n.whole)], snap[2*len(n.whole):]
	left := make(map[string]map[string]int64, len(n.counters))
	for name, c := range n.counters {
		left[name] = maps.Clone(c)
	}
	for g, set := range n.sets {
		if blocked[g] == 1 {
			for c := range left[set] {
				left[set][c] = 0
			}
		}
	}
	for i, m := range n.mig {
		if busy[i] == 0 {
			continue
		}
		d := n.choices[m.choice]
		if set := left[d.CounterSet]; set != nil {
			for c, v := range d.Consumes {
				set[c] -= v
			}
		}
	}
	return left
}

// uniformDemand is a demand that has seen 3,000 requests of the H200's
// seven MIG profiles alike, in turn.
func uniformDemand() *Demand {
	d := NewDemand()
	for i := range 3000 {
		d.Observe(h200Profiles[i%len(h200Profiles)], 1)
	}
	return d
}

// h200Profiles are the H200's MIG profiles, in the mock NVML's order.
var h200Profiles = []string{"1g.18gb", "2g.35gb", "3g.71gb", "4g.71gb", "7g.141gb", "1g.18gb+me", "1g.35gb"}
