package scheduler

import (
	"context"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	slices2 "slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/sets"
	draapi "k8s.io/dynamic-resource-allocation/api"
	"k8s.io/dynamic-resource-allocation/structured"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/utils/ptr"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/pkg/inventory"
	"github.com/tessera-gpu/tessera/pkg/partition"
	"github.com/tessera-gpu/tessera/pkg/placement"
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
		gpus, _, ok := g.migPlace(snap, tc.r, nil)
		if diff := cmp.Diff(tc.want, gpus); diff != "" || ok != tc.ok {
			t.Errorf("%+v: ok %v, want %v; GPUs (-want +got):\n%s", tc.r, ok, tc.ok, diff)
		}
	}
}

// allocatorView is the node as the patched allocator sees it for a MIG
// request of one partition (placement-choice.patch's chosenOrder), worked out
// apart from the plugin's model: the node's devices converted to the
// allocator's types, what the allocated devices and the devices with shares
// leave of each counter set, and which devices are free and of the profile
// (any MIG profile for "").
type allocatorView struct {
	devices []*draapi.Device
	ids     []structured.DeviceID
	left    map[string]map[string]int64
	alloc   *structured.AllocatedState
	profile string
}

func viewOf(t *testing.T, slices []*resourceapi.ResourceSlice, node string, alloc *structured.AllocatedState, profile string) *allocatorView {
	t.Helper()
	v := &allocatorView{left: map[string]map[string]int64{}, alloc: alloc, profile: profile}
	for _, s := range slices {
		if s.Spec.NodeName == nil || *s.Spec.NodeName != node {
			continue
		}
		for _, set := range s.Spec.SharedCounters {
			v.left[set.Name] = map[string]int64{}
			for c, n := range set.Counters {
				v.left[set.Name][c] = n.Value.Value()
			}
		}
		for i := range s.Spec.Devices {
			var d draapi.Device
			if err := draapi.Convert_v1_Device_To_api_Device(&s.Spec.Devices[i], &d, nil); err != nil {
				t.Fatal(err)
			}
			v.devices = append(v.devices, &d)
			v.ids = append(v.ids, structured.MakeDeviceID(s.Spec.Driver, s.Spec.Pool.Name, s.Spec.Devices[i].Name))
		}
	}
	for i, d := range v.devices {
		if _, shared := alloc.AggregatedCapacity[v.ids[i]]; !alloc.AllocatedDevices.Has(v.ids[i]) && !shared {
			continue
		}
		for _, c := range d.ConsumesCounters {
			for name, n := range c.Counters {
				v.left[c.CounterSet.String()][name] -= n.Value.Value()
			}
		}
	}
	return v
}

// fits reports whether device i is free and what it consumes is left.
func (v *allocatorView) fits(i int) bool {
	d := v.devices[i]
	return !v.alloc.AllocatedDevices.Has(v.ids[i]) && len(d.ConsumesCounters) == 1 &&
		partition.Fits(v.left[d.ConsumesCounters[0].CounterSet.String()], choiceOf(d).Consumes)
}

func (v *allocatorView) selectable(i int) bool {
	if i < 0 || i >= len(v.devices) || v.alloc.AllocatedDevices.Has(v.ids[i]) {
		return false
	}
	typ, p := v.devices[i].Attributes[gpuapi.AttrType].StringValue, v.devices[i].Attributes[gpuapi.AttrProfile].StringValue
	return typ != nil && *typ == gpuapi.TypeMIG && p != nil && (v.profile == "" || *p == v.profile)
}

// takes is the first selectable device that fits in the order given, then
// in published order; "" for none.
func (v *allocatorView) takes(order []int) string {
	for i := range v.devices {
		order = append(order, i)
	}
	for _, i := range order {
		if v.selectable(i) && v.fits(i) {
			return v.devices[i].Name.String()
		}
	}
	return ""
}

// choiceTakes is the partition tessera-scheduler's allocator takes on the
// node for a request of one partition: MIGPlacementOrder's ranking first.
func choiceTakes(t *testing.T, slices []*resourceapi.ResourceSlice, node string, alloc *structured.AllocatedState, profile string) string {
	return weightedChoiceTakes(t, nil, slices, node, alloc, profile)
}

// weightedChoiceTakes is choiceTakes with the demand's weights
// (MIGPlacementOrderFor(d), as tessera-scheduler registers it).
func weightedChoiceTakes(t *testing.T, d *Demand, slices []*resourceapi.ResourceSlice, node string, alloc *structured.AllocatedState, profile string) string {
	v := viewOf(t, slices, node, alloc, profile)
	return v.takes(MIGPlacementOrderFor(d)(gpuapi.DriverName, v.devices, v.left, v.selectable))
}

// firstFitTakes is the partition kube-scheduler's allocator takes.
func firstFitTakes(t *testing.T, slices []*resourceapi.ResourceSlice, node string, alloc *structured.AllocatedState, profile string) string {
	return viewOf(t, slices, node, alloc, profile).takes(nil)
}

// fragmentationAfter is the node's fragmentation, as the plugin measures it,
// with the pod's CPU and memory and the given devices allocated in addition
// to alloc's, taken afresh from the index (no cache, no placement model).
func fragmentationAfter(p *Plugin, slices []*resourceapi.ResourceSlice, info fakeNodeInfo, alloc *structured.AllocatedState, pod placement.Request, devices ...string) float64 {
	after := emptyAllocated()
	after.AllocatedDevices.Insert(alloc.AllocatedDevices.UnsortedList()...)
	maps.Copy(after.AggregatedCapacity, alloc.AggregatedCapacity)
	for _, d := range devices {
		after.AllocatedDevices.Insert(structured.MakeDeviceID(gpuapi.DriverName, info.node.Name, d))
	}
	index, _ := p.index.get(slices)
	g := index[info.node.Name]
	snap := g.snapshot(after)
	n := placement.Node{CPU: info.allocatable.cpu - info.request.cpu - pod.CPU, Memory: (info.allocatable.memory-info.request.memory)>>20 - pod.Memory, Free: snap[:len(g.whole)]}
	return g.base(p.workload, n, snap)
}

// TestScoreModelsPlacementChoice: with WithPlacementChoice, a MIG claim of
// one partition is scored by the node's fragmentation after the partition
// tessera-scheduler's choice takes (choiceTakes), not after the one first
// fit would take. The first case is the e2e test's state on a small GPU
// (TestTesseraSchedulerChoosesMIGPlacement): GPU 1 holds a 3g partition on
// memory slices 4-7, GPU 0 is idle; first fit cuts GPU 0, the choice fills
// GPU 1. Then random states of a 4-GPU node (partitions, whole GPUs and
// shares allocated where they fit), every profile and any profile, where
// the two choices differ in some.
func TestScoreModelsPlacementChoice(t *testing.T) {
	const node = "n"
	t.Run("e2e state", func(t *testing.T) {
		alloc := emptyAllocated()
		alloc.AllocatedDevices.Insert(structured.MakeDeviceID(gpuapi.DriverName, node, gpuapi.MIGDeviceName(1, "3g.20gb", 4)))
		slices := migNode(node, 2)
		if got := choiceTakes(t, slices, node, alloc, "1g.5gb"); got[:len("gpu-1-")] != "gpu-1-" {
			t.Fatalf("the choice takes %s, want a partition of GPU 1", got)
		}
		if !checkScoreModelsChoice(t, nil, slices, alloc, "1g.5gb") {
			t.Errorf("first fit takes the same partition, or one as good: the case tells nothing")
		}
	})

	for _, kind := range []string{"a100-like", "h200"} {
		t.Run("random/"+kind, func(t *testing.T) {
			differ, requests := 0, 0
			randomMIGStates(t, kind, func(slices []*resourceapi.ResourceSlice, alloc *structured.AllocatedState, profile string) {
				requests++
				if checkScoreModelsChoice(t, nil, slices, alloc, profile) {
					differ++
				}
			})
			t.Logf("%d of %d requests scored differently from first fit", differ, requests)
			if differ == 0 {
				t.Errorf("first fit and the choice never differ: the states tell nothing")
			}
		})
	}
}

// TestScoreModelsWeightedPlacementChoice: with WithDemand too, the score
// models the choice with the demand's weights, as the allocator ranks with
// them (MIGPlacementOrderFor with the same demand), on the random states of
// TestScoreModelsPlacementChoice, with a demand that has seen mostly 1g
// partitions and never a whole GPU or a share; in some of them the weighted
// choice takes another partition than the unweighted one, or the case would
// tell nothing.
func TestScoreModelsWeightedPlacementChoice(t *testing.T) {
	d := NewDemand()
	for i := range 3000 {
		d.Observe([]string{"1g.18gb", "1g.18gb", "1g.18gb", "3g.71gb", "7g.141gb"}[i%5], 1)
	}
	if d.Weights().Version == 0 {
		t.Fatal("the demand published no weights")
	}
	moved, requests := 0, 0
	randomMIGStates(t, "h200", func(slices []*resourceapi.ResourceSlice, alloc *structured.AllocatedState, profile string) {
		requests++
		checkScoreModelsChoice(t, d, slices, alloc, profile)
		if weightedChoiceTakes(t, d, slices, "n", alloc, profile) != choiceTakes(t, slices, "n", alloc, profile) {
			moved++
		}
	})
	t.Logf("the weights moved %d of %d requests' partitions", moved, requests)
	if moved == 0 {
		t.Error("the weights never moved a partition: the states tell nothing")
	}
}

// checkScoreModelsChoice scores a pod with a claim of one partition of the
// profile (any profile for "") on node "n" in the allocated state, with
// WithPlacementChoice and, when d is set, WithDemand(d), and fails when the
// raw score is not the fragmentation delta of the partition the allocator's
// choice takes with the same weights. differs is whether first fit would
// have taken another partition with another delta.
func checkScoreModelsChoice(t *testing.T, d *Demand, slices []*resourceapi.ResourceSlice, alloc *structured.AllocatedState, profile string) (differs bool) {
	t.Helper()
	const node = "n"
	info := nodeInfos(node)[0].(fakeNodeInfo)
	pod := placement.Request{CPU: 1000, Memory: 1024}
	var selectors []string
	if profile != "" {
		selectors = append(selectors, profileIs(profile))
	}
	dra := &fakeDRA{slices: slices, claims: map[string]*resourceapi.ResourceClaim{"ns/c": migClaim("c", 1, selectors...)}, allocated: alloc}
	opts := []Option{WithPlacementChoice()}
	if d != nil {
		opts = append(opts, WithDemand(d))
	}
	p, err := NewWithState(Args{}, dra, opts...)
	if err != nil {
		t.Fatal(err)
	}
	scores, st := scoreAll(t, p, "c", []fwk.NodeInfo{info})
	if st != nil {
		t.Fatalf("PreScore: %v", st)
	}
	took := weightedChoiceTakes(t, d, slices, node, alloc, profile)
	if took == "" {
		if scores[0].Score != int64(worstDelta/scoreUnit) {
			t.Errorf("profile %q fits nowhere, raw score %d, want the worst", profile, scores[0].Score)
		}
		return false
	}
	before := fragmentationAfter(p, slices, info, alloc, placement.Request{})
	want := int64(math.Round((fragmentationAfter(p, slices, info, alloc, pod, took) - before) / scoreUnit))
	if scores[0].Score != want {
		t.Errorf("profile %q: raw score %d, want %d, the fragmentation delta of %s, which the choice takes (allocated %v, shares %v)",
			profile, scores[0].Score, want, took, alloc.AllocatedDevices.UnsortedList(), slices2.Collect(maps.Keys(alloc.AggregatedCapacity)))
	}
	firstFit := firstFitTakes(t, slices, node, alloc, profile)
	return firstFit != took && want != int64(math.Round((fragmentationAfter(p, slices, info, alloc, pod, firstFit)-before)/scoreUnit))
}

// randomMIGStates calls f for 40 random allocated states of a 4-GPU node n
// ("a100-like" or "h200": partitions, whole GPUs and shares allocated where
// they fit) and every profile of the node and any profile ("").
func randomMIGStates(t *testing.T, kind string, f func(slices []*resourceapi.ResourceSlice, alloc *structured.AllocatedState, profile string)) {
	t.Helper()
	const node = "n"
	slices := migNode(node, 4)
	if kind == "h200" {
		inv := h200Inventory(t)
		inv.GPUs = inv.GPUs[:4]
		slices = resourceslice.Objects(node, resourceslice.Build(node, inv, resourceslice.Options{Pool: "default"}))
	}
	var all []string
	profiles := []string{""}
	for _, s := range slices {
		for _, d := range s.Spec.Devices {
			all = append(all, d.Name)
			if p := d.Attributes[gpuapi.AttrProfile].StringValue; p != nil && !slices2.Contains(profiles, *p) {
				profiles = append(profiles, *p)
			}
		}
	}
	for seed := range uint64(40) {
		rng := rand.New(rand.NewPCG(seed, 4))
		alloc := emptyAllocated()
		for range rng.IntN(16) {
			name := all[rng.IntN(len(all))]
			id := structured.MakeDeviceID(gpuapi.DriverName, node, name)
			v := viewOf(t, slices, node, alloc, "")
			if !v.fits(slices2.Index(all, name)) {
				continue
			}
			if strings.HasSuffix(name, "-shared") {
				alloc.AggregatedCapacity[id] = structured.ConsumedCapacity{gpuapi.CapCompute: ptr.To(resource.MustParse("30"))}
				continue
			}
			alloc.AllocatedDevices.Insert(id)
		}
		for _, profile := range profiles {
			f(slices, alloc, profile)
		}
	}
}
