package scheduler

import (
	"context"
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/dynamic-resource-allocation/structured"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/utils/ptr"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
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
	dra := &fakeDRA{
		claims: map[string]*resourceapi.ResourceClaim{"ns/half": shareClaim("half", 50)},
		allocated: &structured.AllocatedState{
			AllocatedDevices:         sets.New[structured.DeviceID](),
			AllocatedSharedDeviceIDs: sets.New[structured.SharedDeviceID](),
			AggregatedCapacity:       structured.ConsumedCapacityCollection{},
		},
	}
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
	pod := podWithClaim("half")
	ctx := context.Background()
	scores := make(fwk.NodeScoreList, len(infos))
	// Each pod, a share on GPU 1 of the next nodes comes or goes. The first
	// cycle, untimed, builds the slice index (and fills the cache): the
	// steady state between slice changes.
	next := 0
	for i := 0; i == 0 || b.Loop(); i++ {
		for range changed {
			id := structured.MakeDeviceID(gpuapi.DriverName, infos[next%nodes].Node().Name, gpuapi.SharedDeviceName(1))
			if _, ok := dra.allocated.AggregatedCapacity[id]; ok {
				delete(dra.allocated.AggregatedCapacity, id)
			} else {
				dra.allocated.AggregatedCapacity[id] = structured.ConsumedCapacity{gpuapi.CapCompute: ptr.To(resource.MustParse("20"))}
			}
			next++
		}
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
