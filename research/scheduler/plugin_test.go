package scheduler

import (
	"context"
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/dynamic-resource-allocation/structured"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/utils/ptr"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/pkg/inventory"
	"github.com/tessera-gpu/tessera/pkg/placement"
	"github.com/tessera-gpu/tessera/pkg/resourceslice"
)

type fakeDRA struct {
	slices    []*resourceapi.ResourceSlice
	claims    map[string]*resourceapi.ResourceClaim
	allocated *structured.AllocatedState
}

func (f *fakeDRA) Slices() ([]*resourceapi.ResourceSlice, error) { return f.slices, nil }
func (f *fakeDRA) Claim(ns, name string) (*resourceapi.ResourceClaim, error) {
	if c, ok := f.claims[ns+"/"+name]; ok {
		return c, nil
	}
	return nil, fmt.Errorf("claim %s/%s not found", ns, name)
}
func (f *fakeDRA) Allocated() (*structured.AllocatedState, error) { return f.allocated, nil }

type fakeResource struct {
	fwk.Resource
	cpu, memory int64
}

func (r fakeResource) GetMilliCPU() int64 { return r.cpu }
func (r fakeResource) GetMemory() int64   { return r.memory }

type fakeNodeInfo struct {
	fwk.NodeInfo
	node                 *corev1.Node
	allocatable, request fakeResource
}

func (n fakeNodeInfo) Node() *corev1.Node           { return n.node }
func (n fakeNodeInfo) GetAllocatable() fwk.Resource { return n.allocatable }
func (n fakeNodeInfo) GetRequested() fwk.Resource   { return n.request }

type fakeCycleState struct {
	fwk.CycleState
	data map[fwk.StateKey]fwk.StateData
}

func (s *fakeCycleState) Write(k fwk.StateKey, d fwk.StateData) { s.data[k] = d }
func (s *fakeCycleState) Read(k fwk.StateKey) (fwk.StateData, error) {
	if d, ok := s.data[k]; ok {
		return d, nil
	}
	return nil, fmt.Errorf("no %s", k)
}

func gpuNode(name string, gpus int) []*resourceapi.ResourceSlice {
	inv := inventory.Node{DriverVersion: "550.54.15", CUDADriverVersion: "12.4"}
	for i := range gpus {
		inv.GPUs = append(inv.GPUs, inventory.GPU{Index: i, Minor: i, UUID: fmt.Sprintf("GPU-%s-%d", name, i), ProductName: "T4",
			Brand: "nvidia", Architecture: "turing", CUDAComputeCapability: "7.5", MemoryBytes: 16 << 30})
	}
	return resourceslice.Objects(name, resourceslice.Build(name, inv, resourceslice.Options{Pool: "default"}))
}

func shareClaim(name string, compute int64) *resourceapi.ResourceClaim {
	return &resourceapi.ResourceClaim{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name},
		Spec: resourceapi.ResourceClaimSpec{Devices: resourceapi.DeviceClaim{Requests: []resourceapi.DeviceRequest{{
			Name: "gpu", Exactly: &resourceapi.ExactDeviceRequest{
				DeviceClassName: gpuapi.ClassShared, Count: 1,
				Capacity: &resourceapi.CapacityRequirements{Requests: map[resourceapi.QualifiedName]resource.Quantity{
					gpuapi.CapCompute: *resource.NewQuantity(compute, resource.DecimalSI),
				}},
			},
		}}}},
	}
}

func classClaim(name, class string, count int64) *resourceapi.ResourceClaim {
	return &resourceapi.ResourceClaim{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name},
		Spec: resourceapi.ResourceClaimSpec{Devices: resourceapi.DeviceClaim{Requests: []resourceapi.DeviceRequest{{
			Name: "gpu", Exactly: &resourceapi.ExactDeviceRequest{DeviceClassName: class, Count: count},
		}}}},
	}
}

func podWithClaim(claim string) *corev1.Pod {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p-" + claim}}
	pod.Spec.Containers = []corev1.Container{{Name: "c", Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
		corev1.ResourceCPU: resource.MustParse("1"), corev1.ResourceMemory: resource.MustParse("1Gi"),
	}}}}
	if claim != "" {
		pod.Spec.ResourceClaims = []corev1.PodResourceClaim{{Name: "gpu", ResourceClaimName: ptr.To(claim)}}
	}
	return pod
}

// TestScorePacksShares: node-a's only GPU is half taken by a share, node-b's
// is idle. A half share should go to node-a (completing its GPU); a whole
// GPU fits only node-b, and the plugin must not favour node-a for it.
func TestScorePacksShares(t *testing.T) {
	dra := &fakeDRA{
		slices: append(gpuNode("node-a", 1), gpuNode("node-b", 1)...),
		claims: map[string]*resourceapi.ResourceClaim{
			"ns/half":  shareClaim("half", 50),
			"ns/whole": classClaim("whole", gpuapi.ClassGPU, 1),
		},
		allocated: &structured.AllocatedState{
			AllocatedDevices:         sets.New[structured.DeviceID](),
			AllocatedSharedDeviceIDs: sets.New[structured.SharedDeviceID](),
			AggregatedCapacity: structured.ConsumedCapacityCollection{
				structured.MakeDeviceID(gpuapi.DriverName, "node-a", gpuapi.SharedDeviceName(0)): {gpuapi.CapCompute: ptr.To(resource.MustParse("50"))},
			},
		},
	}
	p, err := NewWithState(Args{}, dra)
	if err != nil {
		t.Fatal(err)
	}
	nodes := []fwk.NodeInfo{}
	for _, name := range []string{"node-a", "node-b"} {
		nodes = append(nodes, fakeNodeInfo{
			node:        &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}},
			allocatable: fakeResource{cpu: 32000, memory: 64 << 30},
			request:     fakeResource{cpu: 1000, memory: 1 << 30},
		})
	}
	score := func(claim string) (fwk.NodeScoreList, *fwk.Status) {
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
		if st := p.NormalizeScore(ctx, state, pod, out); !st.IsSuccess() {
			t.Fatalf("NormalizeScore: %v", st)
		}
		return out, nil
	}
	// The best node scores 50 plus its place in the node order, the other
	// below 50 (its delta is more than placement.Tolerance worse).
	const floor = placement.MaxScore - placement.OrderLevels + 1
	best := func(name string) int64 { return floor + placement.NodeOrder(name, 0) }
	half, _ := score("half")
	if half[0].Score != best("node-a") || half[1].Score >= floor {
		t.Errorf("half share: scores %v, want node-a %d and node-b below %d", half, best("node-a"), floor)
	}
	whole, _ := score("whole")
	if whole[1].Score != best("node-b") || whole[0].Score >= floor {
		t.Errorf("whole GPU: scores %v, want node-b %d and node-a below %d", whole, best("node-b"), floor)
	}
	if _, st := score("missing"); st.IsSuccess() {
		t.Error("missing claim: PreScore succeeded")
	}
}

func TestArgs(t *testing.T) {
	args, err := decodeArgs(&runtime.Unknown{Raw: []byte(`{"workload":[{"cpuMilli":1000,"memoryMiB":1024,"gpus":1,"gpuMilli":500,"weight":3},{"gpus":1,"gpuMilli":1000,"weight":1}]}`)})
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewWithState(args, &fakeDRA{})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.workload.Classes) != 2 || p.workload.Classes[0].Weight != 0.75 {
		t.Errorf("workload %+v, want two classes, the first weighing 0.75", p.workload)
	}
	if _, err := NewWithState(Args{Workload: []WorkloadClass{{GPUs: 1, GPUMilli: 1500, Weight: 1}}}, &fakeDRA{}); err == nil {
		t.Error("1.5 GPUs per GPU accepted")
	}
	if _, err := decodeArgs(&runtime.Unknown{Raw: []byte(`{"workload": 3}`)}); err == nil {
		t.Error("bad JSON accepted")
	}
}

// TestSliceIndexFollowsSlices: the plugin indexes slices once, and again
// when the listed objects change.
func TestSliceIndexFollowsSlices(t *testing.T) {
	dra := &fakeDRA{
		slices: gpuNode("node-a", 1),
		claims: map[string]*resourceapi.ResourceClaim{"ns/half": shareClaim("half", 50)},
		allocated: &structured.AllocatedState{
			AllocatedDevices: sets.New[structured.DeviceID](), AggregatedCapacity: structured.ConsumedCapacityCollection{},
		},
	}
	p, err := NewWithState(Args{}, dra)
	if err != nil {
		t.Fatal(err)
	}
	gpus := func() map[string]*nodeGPUs {
		state := &fakeCycleState{data: map[fwk.StateKey]fwk.StateData{}}
		if st := p.PreScore(context.Background(), state, podWithClaim("half"), nil); !st.IsSuccess() {
			t.Fatal(st)
		}
		data, _ := state.Read(stateKey)
		return data.(*cycleState).gpus
	}
	first := gpus()
	if len(first) != 1 || first["node-a"] == nil {
		t.Fatalf("index %v, want node-a", first)
	}
	if again := gpus(); fmt.Sprintf("%p", again) != fmt.Sprintf("%p", first) {
		t.Error("unchanged slices indexed again")
	}
	nodeB := gpuNode("node-b", 1)
	dra.slices = append(gpuNode("node-a", 2), nodeB...)
	after := gpus()
	if after["node-b"] == nil || len(after["node-a"].whole) != 2 {
		t.Errorf("index after the slices changed: %v", after)
	}
	// Another driver's slice does not make every pod index again, and a
	// node listed with the same slices keeps its index (and its cache)
	// while a node with a new slice is indexed again.
	other := &resourceapi.ResourceSlice{Spec: resourceapi.ResourceSliceSpec{Driver: "other.example.com", NodeName: ptr.To("node-a")}}
	dra.slices = append(dra.slices, other)
	withOther := gpus()
	if again := gpus(); fmt.Sprintf("%p", again) != fmt.Sprintf("%p", withOther) {
		t.Error("unchanged slices with another driver's indexed again")
	}
	dra.slices = append(append(gpuNode("node-a", 2), nodeB...), other)
	replaced := gpus()
	if replaced["node-b"] != withOther["node-b"] {
		t.Error("node-b, whose slices did not change, indexed again")
	}
	if replaced["node-a"] == withOther["node-a"] || len(replaced["node-a"].whole) != 2 {
		t.Error("node-a's new slices not indexed")
	}
	dra.slices = append(gpuNode("node-a", 2), other)
	if gone := gpus(); gone["node-b"] != nil {
		t.Error("node-b, no longer listed, still indexed")
	}
}
