package scheduler

import (
	"fmt"
	"math/rand/v2"
	"strings"
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
	"github.com/tessera-gpu/tessera/pkg/resourceslice"
)

// TestPlacementMemoFollowsLayoutsAndStates scores MIG claims on nodes of two
// GPU kinds, interleaved, while devices of random nodes are allocated and
// freed, and checks every score against a plugin that works every
// placement out afresh (no memo, no cache): a memo that handed a node
// another layout's placement, or the placement of another state, would
// change a score. The kinds are an A100-like node of 7 GPUs and an H200
// node of 4, whose snapshots have the same number of bits (so that only
// the layout tells their idle states apart), and each node's changes are
// drawn from a few of its devices (partitions, a whole GPU, a share), so
// that nodes of one kind are often in one state and the memo is used.
func TestPlacementMemoFollowsLayoutsAndStates(t *testing.T) {
	const steps = 300
	claims := map[string]*resourceapi.ResourceClaim{
		"ns/any": migClaim("any", 1), "ns/any2": migClaim("any2", 2),
		"ns/a1g": migClaim("a1g", 1, profileIs("1g.5gb")), "ns/a3g": migClaim("a3g", 1, profileIs("3g.20gb")),
		"ns/h1g": migClaim("h1g", 1, profileIs("1g.18gb")), "ns/h3g": migClaim("h3g", 1, profileIs("3g.71gb")),
		"ns/h1gme": migClaim("h1gme", 1, profileIs("1g.18gb+me")), "ns/h7g": migClaim("h7g", 1, profileIs("7g.141gb")),
	}
	pods := []string{"any", "any2", "a1g", "a3g", "h1g", "h3g", "h1gme", "h7g"}
	h200 := h200Inventory(t)
	h200.GPUs = h200.GPUs[:4]
	h200Pool := resourceslice.Build("template", h200, resourceslice.Options{Pool: "default"}).Pools["template"]
	for _, model := range []string{"first fit", "choice"} {
		for _, cache := range []string{"off", "on"} {
			for seed := range uint64(2) {
				t.Run(fmt.Sprintf("model=%s/cache=%s/seed=%d", model, cache, seed), func(t *testing.T) {
					var opts []Option
					if model == "choice" {
						opts = append(opts, WithPlacementChoice())
					}
					rng := rand.New(rand.NewPCG(seed, 31))
					dra := &fakeDRA{claims: claims, allocated: emptyAllocated()}
					var infos []fwk.NodeInfo
					// A few devices of each node, drawn once per kind.
					var changes [][]structured.DeviceID
					var aNames, hNames []string
					for n := range 6 {
						name := fmt.Sprintf("node-%d", n)
						var own []*resourceapi.ResourceSlice
						if n%2 == 0 {
							own = migNode(name, 7)
						} else {
							own = resourceslice.Objects(name, draslices.DriverResources{Pools: map[string]draslices.Pool{name: h200Pool}})
						}
						dra.slices = append(dra.slices, own...)
						names := &aNames
						if n%2 == 1 {
							names = &hNames
						}
						if *names == nil {
							var all []string
							for _, s := range own {
								for _, d := range s.Spec.Devices {
									all = append(all, d.Name)
								}
							}
							for range 4 {
								*names = append(*names, all[rng.IntN(len(all))])
							}
							// A whole GPU and a share block the partitions
							// of theirs.
							*names = append(*names, gpuapi.WholeDeviceName(rng.IntN(4)), gpuapi.SharedDeviceName(rng.IntN(4)))
						}
						var ids []structured.DeviceID
						for _, d := range *names {
							ids = append(ids, structured.MakeDeviceID(gpuapi.DriverName, name, d))
						}
						changes = append(changes, ids)
						infos = append(infos, fakeNodeInfo{
							node:        &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}},
							allocatable: fakeResource{cpu: 32000, memory: 64 << 30},
							request:     fakeResource{cpu: 1000, memory: 1 << 30},
						})
					}
					memoOpts := opts
					if cache == "off" {
						memoOpts = append(memoOpts, WithoutFragmentationCache())
					}
					memo, err := NewWithState(Args{}, dra, memoOpts...)
					if err != nil {
						t.Fatal(err)
					}
					fresh, err := NewWithState(Args{}, dra, append(opts, WithoutFragmentationCache(), WithoutPlacementMemo())...)
					if err != nil {
						t.Fatal(err)
					}
					for step := range steps {
						n := rng.IntN(len(changes))
						id := changes[n][rng.IntN(len(changes[n]))]
						_, shared := dra.allocated.AggregatedCapacity[id]
						switch {
						case shared:
							delete(dra.allocated.AggregatedCapacity, id)
						case strings.HasSuffix(id.Device.String(), "-shared"):
							dra.allocated.AggregatedCapacity[id] = structured.ConsumedCapacity{gpuapi.CapCompute: ptr.To(resource.MustParse("30"))}
						case dra.allocated.AllocatedDevices.Has(id):
							dra.allocated.AllocatedDevices.Delete(id)
						default:
							dra.allocated.AllocatedDevices.Insert(id)
						}
						sameScores(t, step, pods[rng.IntN(len(pods))], fresh, "memo", memo, infos)
					}
				})
			}
		}
	}
}
