package scheduler

import (
	"context"
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/dynamic-resource-allocation/structured"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/utils/ptr"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/pkg/inventory"
	"github.com/tessera-gpu/tessera/pkg/resourceslice"
)

// migNode publishes a node of MIG-capable GPUs with a small A100-like
// geometry (8 memory slices): 1g at 0..6, 2g at 0, 2, 4, 3g at 0 and 4, 7g
// at 0, as NVML lists an A100-40GB's GPU-instance profiles.
func migNode(name string, gpus int) []*resourceapi.ResourceSlice {
	inv := inventory.Node{DriverVersion: "550.54.15", CUDADriverVersion: "12.4"}
	profile := func(id int, n string, slices, size int, starts ...int) inventory.MIGProfile {
		p := inventory.MIGProfile{ID: id, Name: n, SliceCount: slices, InstanceCount: len(starts), MemoryBytes: uint64(size) * 5 << 30}
		for _, s := range starts {
			p.Placements = append(p.Placements, inventory.Placement{Start: s, Size: size})
		}
		return p
	}
	for i := range gpus {
		inv.GPUs = append(inv.GPUs, inventory.GPU{Index: i, Minor: i, UUID: fmt.Sprintf("GPU-%s-%d", name, i), ProductName: "NVIDIA A100-SXM4-40GB",
			Brand: "nvidia", Architecture: "ampere", CUDAComputeCapability: "8.0", MemoryBytes: 40 << 30,
			MIG: inventory.MIG{Capable: true, Enabled: true, ToggleWithoutReset: true, Profiles: []inventory.MIGProfile{
				profile(0, "7g.40gb", 7, 8, 0), profile(5, "2g.10gb", 2, 2, 0, 2, 4),
				profile(9, "3g.20gb", 3, 4, 0, 4), profile(19, "1g.5gb", 1, 1, 0, 1, 2, 3, 4, 5, 6),
			}}})
	}
	return resourceslice.Objects(name, resourceslice.Build(name, inv, resourceslice.Options{Pool: "default"}))
}

func migClaim(name string, count int64, selectors ...string) *resourceapi.ResourceClaim {
	c := classClaim(name, gpuapi.ClassMIG, count)
	for _, s := range selectors {
		c.Spec.Devices.Requests[0].Exactly.Selectors = append(c.Spec.Devices.Requests[0].Exactly.Selectors,
			resourceapi.DeviceSelector{CEL: &resourceapi.CELDeviceSelector{Expression: s}})
	}
	return c
}

func profileIs(p string) string {
	return fmt.Sprintf(`device.attributes["gpu.tessera.dev"].profile == %q`, p)
}

func emptyAllocated() *structured.AllocatedState {
	return &structured.AllocatedState{
		AllocatedDevices:         sets.New[structured.DeviceID](),
		AllocatedSharedDeviceIDs: sets.New[structured.SharedDeviceID](),
		AggregatedCapacity:       structured.ConsumedCapacityCollection{},
	}
}

func nodeInfos(names ...string) []fwk.NodeInfo {
	var out []fwk.NodeInfo
	for _, name := range names {
		out = append(out, fakeNodeInfo{
			node:        &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}},
			allocatable: fakeResource{cpu: 32000, memory: 64 << 30},
			request:     fakeResource{cpu: 1000, memory: 1 << 30},
		})
	}
	return out
}

// scoreAll runs one pod's scoring cycle; it returns the status of PreScore
// when it did not succeed.
func scoreAll(t *testing.T, p *Plugin, claim string, nodes []fwk.NodeInfo) (fwk.NodeScoreList, *fwk.Status) {
	t.Helper()
	ctx := context.Background()
	state := &fakeCycleState{data: map[fwk.StateKey]fwk.StateData{}}
	pod := podWithClaim(claim)
	if st := p.PreScore(ctx, state, pod, nodes); !st.IsSuccess() {
		return nil, st
	}
	var out fwk.NodeScoreList
	for _, n := range nodes {
		s, st := p.Score(ctx, state, pod, n)
		if !st.IsSuccess() {
			t.Fatalf("Score: %v", st)
		}
		out = append(out, fwk.NodeScore{Name: n.Node().Name, Score: s})
	}
	return out, nil
}

// TestScoreMIG: a MIG partition on an idle GPU takes that GPU from shares
// and whole-GPU claims, one on a GPU already cut into partitions takes
// nothing more, so the plugin should send MIG claims where the allocator's
// first fit lands on a cut GPU, and skip claims whose selectors it cannot
// read.
func TestScoreMIG(t *testing.T) {
	mig := func(node string, gpu int, profile string, start int) structured.DeviceID {
		return structured.MakeDeviceID(gpuapi.DriverName, node, gpuapi.MIGDeviceName(gpu, profile, start))
	}
	tests := []struct {
		name      string
		claim     *resourceapi.ResourceClaim
		allocated []structured.DeviceID
		// want is the node with the lower raw score (fragmentation delta),
		// or "tie".
		want   string
		skip   bool
		noRoom bool
	}{{
		name:      "1g goes to the node whose first GPU is cut",
		claim:     migClaim("c", 1, profileIs("1g.5gb")),
		allocated: []structured.DeviceID{mig("node-a", 0, "1g.5gb", 0)},
		want:      "node-a",
	}, {
		name:      "3g goes where the cut GPU still has its placement",
		claim:     migClaim("c", 1, profileIs("3g.20gb")),
		allocated: []structured.DeviceID{mig("node-a", 0, "3g.20gb", 0), mig("node-b", 0, "1g.5gb", 4), mig("node-b", 0, "1g.5gb", 0)},
		want:      "node-a",
	}, {
		name:      "any profile",
		claim:     migClaim("c", 1),
		allocated: []structured.DeviceID{mig("node-b", 0, "2g.10gb", 2)},
		want:      "node-b",
	}, {
		name:      "two partitions, both on node-b's cut GPU",
		claim:     migClaim("c", 2, profileIs("1g.5gb")),
		allocated: []structured.DeviceID{mig("node-b", 0, "3g.20gb", 4)},
		want:      "node-b",
	}, {
		name:      "a 7g goes on node-a's second GPU, filling the node, its first being taken whole",
		claim:     migClaim("c", 1, profileIs("7g.40gb")),
		allocated: []structured.DeviceID{structured.MakeDeviceID(gpuapi.DriverName, "node-a", gpuapi.WholeDeviceName(0))},
		want:      "node-a",
	}, {
		name:      "no room",
		claim:     migClaim("c", 3, profileIs("7g.40gb")),
		allocated: nil,
		noRoom:    true,
	}, {
		name:  "selector the plugin cannot read",
		claim: migClaim("c", 1, `device.capacity["gpu.tessera.dev"].memory.compareTo(quantity("10Gi")) >= 0`),
		skip:  true,
	}, {
		name:  "two profiles",
		claim: migClaim("c", 1, profileIs("1g.5gb"), profileIs("2g.10gb")),
		skip:  true,
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dra := &fakeDRA{
				slices:    append(migNode("node-a", 2), migNode("node-b", 2)...),
				claims:    map[string]*resourceapi.ResourceClaim{"ns/c": tc.claim},
				allocated: emptyAllocated(),
			}
			dra.allocated.AllocatedDevices.Insert(tc.allocated...)
			p, err := NewWithState(Args{}, dra)
			if err != nil {
				t.Fatal(err)
			}
			scores, st := scoreAll(t, p, "c", nodeInfos("node-a", "node-b"))
			if tc.skip {
				if !st.IsSkip() {
					t.Errorf("status %v, want Skip", st)
				}
				return
			}
			if st != nil {
				t.Fatalf("PreScore: %v", st)
			}
			a, b := scores[0].Score, scores[1].Score
			if tc.noRoom {
				if a != int64(worstDelta/0.01) || b != a {
					t.Errorf("raw scores %v, want the worst on both", scores)
				}
				return
			}
			got := "tie"
			switch {
			case a < b:
				got = "node-a"
			case b < a:
				got = "node-b"
			}
			if got != tc.want {
				t.Errorf("raw scores (fragmentation deltas) %v: better %s, want %s", scores, got, tc.want)
			}
		})
	}
}

// TestMIGFirstFit checks the modelled allocator choice on one node.
func TestMIGFirstFit(t *testing.T) {
	g := gpusByNode(migNode("n", 2))["n"]
	alloc := emptyAllocated()
	alloc.AllocatedDevices.Insert(structured.MakeDeviceID(gpuapi.DriverName, "n", gpuapi.MIGDeviceName(0, "3g.20gb", 4)))
	alloc.AggregatedCapacity[structured.MakeDeviceID(gpuapi.DriverName, "n", gpuapi.SharedDeviceName(1))] = structured.ConsumedCapacity{
		gpuapi.CapCompute: ptr.To(resource.MustParse("10"))}
	snap := g.snapshot(alloc)
	// GPU 0 has memory slices 4-7 taken by its 3g: half of it is free but
	// usable only by partitions; GPU 1 holds a share, no partition.
	if got := g.partitioned(snap[2:4], snap[4:]); got != 500 {
		t.Errorf("partitioned capacity %d, want 500", got)
	}
	for _, tc := range []struct {
		r    migRequest
		want []int
		ok   bool
	}{
		{migRequest{"3g.20gb", 1}, []int{0}, true},
		{migRequest{"3g.20gb", 2}, []int{0}, false},
		{migRequest{"1g.5gb", 4}, []int{0, 0, 0, 0}, true},
		{migRequest{"1g.5gb", 5}, []int{0, 0, 0, 0}, false},
		{migRequest{"7g.40gb", 1}, nil, false},
	} {
		gpus, _, ok := g.migFirstFit(snap, tc.r)
		if diff := cmp.Diff(tc.want, gpus); diff != "" || ok != tc.ok {
			t.Errorf("%+v: ok %v, want %v; GPUs (-want +got):\n%s", tc.r, ok, tc.ok, diff)
		}
	}
}
