package sim

import (
	"bytes"
	"context"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/tessera-gpu/tessera/pkg/placement"
)

func TestReadPods(t *testing.T) {
	in := "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos\n" +
		"a,1000,2048,1,495,,LS\n" +
		"b,2000,4096,2,1000,V100M32|V100M16|V100M32,BE\n" +
		"c,500,100,0,0,nan,LS\n"
	got, err := ReadPods(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []Pod{
		{Name: "a", Request: placement.Request{CPU: 1000, Memory: 2048, GPUs: 1, Milli: 500}},
		{Name: "b", Request: placement.Request{CPU: 2000, Memory: 4096, GPUs: 2, Milli: 1000, Models: "V100M16|V100M32"}, Models: []string{"V100M16", "V100M32"}},
		{Name: "c", Request: placement.Request{CPU: 500, Memory: 100}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ReadPods (-want +got):\n%s", diff)
	}
}

func TestReadErrors(t *testing.T) {
	header := "name,cpu_milli,memory_mib,num_gpu,gpu_milli\n"
	for name, tc := range map[string]struct {
		pods, nodes string
		want        string
	}{
		"missing column":      {pods: "name,cpu_milli\nx,1\n", want: `lacks column "memory_mib"`},
		"not a number":        {pods: header + "x,abc,1,0,0\n", want: "line 2: column cpu_milli"},
		"share of 2 GPUs":     {pods: header + "x,1,1,2,500\n", want: "only single-GPU pods can take a share"},
		"too much of a GPU":   {pods: header + "x,1,1,1,1500\n", want: "gpu_milli 1500 must be in 1..1000"},
		"no pods":             {pods: header, want: "no pods"},
		"node without model":  {nodes: "sn,cpu_milli,memory_mib,gpu,model\nn,1000,1000,2,\n", want: "needs a model"},
		"node with no memory": {nodes: "sn,cpu_milli,memory_mib,gpu,model\nn,1000,0,2,T4\n", want: "positive cpu_milli and memory_mib"},
	} {
		t.Run(name, func(t *testing.T) {
			var err error
			if tc.pods != "" {
				_, err = ReadPods(strings.NewReader(tc.pods))
			} else {
				_, err = ReadNodes(strings.NewReader(tc.nodes))
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func nodes(n, gpus int, model string) []NodeSpec {
	var out []NodeSpec
	for i := range n {
		out = append(out, NodeSpec{Name: "node-" + string(rune('a'+i)), CPU: 32000, Memory: 128 << 10, GPUs: gpus, Model: model})
	}
	return out
}

func pod(name string, gpus, milli int) Pod {
	return Pod{Name: name, Request: placement.Request{CPU: 1000, Memory: 1024, GPUs: gpus, Milli: milli}}
}

// TestStockFragmentsTesseraPacks is the smallest case of the difference:
// two one-GPU nodes, two half-GPU pods, then a whole-GPU pod. The stock
// scheduler spreads (LeastAllocated) the halves over both GPUs and the whole
// GPU finds no room; Tessera puts both halves on one GPU.
func TestStockFragmentsTesseraPacks(t *testing.T) {
	pods := []Pod{pod("half-1", 1, 500), pod("half-2", 1, 500), pod("whole", 1, 1000)}
	for policy, wantFailed := range map[Policy]int{PolicyStock: 1, PolicyTessera: 0, PolicyWhole: 1} {
		t.Run(string(policy), func(t *testing.T) {
			_, failed, err := placeInOrder(context.Background(), NewFleet(nodes(2, 1, "T4")), pods, policy, DefaultWeight)
			if err != nil {
				t.Fatal(err)
			}
			if failed != wantFailed {
				t.Errorf("%d pods failed, want %d", failed, wantFailed)
			}
		})
	}
}

// TestTesseraTiesGoToTheNodeOrder: CPU-only pods change no node's GPU
// fragmentation, so every node is among the best for them. The stock
// scheduler spreads them (LeastAllocated); tessera's score takes the first
// node of its node order every time, so they pack onto it and the other
// nodes stay empty.
func TestTesseraTiesGoToTheNodeOrder(t *testing.T) {
	var pods []Pod
	for range 8 {
		pods = append(pods, Pod{Name: "cpu", Request: placement.Request{CPU: 2000, Memory: 1024}})
	}
	specs := nodes(4, 8, "V100M32")
	first, orders := 0, map[int64]bool{}
	for i, s := range specs {
		// placeInOrder runs seed 1.
		orders[placement.NodeOrder(s.Name, 1)] = true
		if placement.NodeOrder(s.Name, 1) > placement.NodeOrder(specs[first].Name, 1) {
			first = i
		}
	}
	if len(orders) != len(specs) {
		t.Fatalf("nodes share a place in the order: %v", orders)
	}
	for policy, want := range map[Policy]int{PolicyStock: 4, PolicyTessera: 1} {
		t.Run(string(policy), func(t *testing.T) {
			sched, failed, err := placeInOrder(context.Background(), NewFleet(specs), pods, policy, DefaultWeight)
			if err != nil || failed != 0 {
				t.Fatalf("failed %d, err %v", failed, err)
			}
			used := 0
			for i, st := range sched.states {
				if st.node.CPU < specs[i].CPU {
					used++
					if policy == PolicyTessera && i != first {
						t.Errorf("a pod went to %s, not to %s, the first in the node order", specs[i].Name, specs[first].Name)
					}
				}
			}
			if used != want {
				t.Errorf("pods on %d nodes, want %d", used, want)
			}
		})
	}
}

// TestModelAgreesWithAllocator replays a mixed workload with every policy
// and checks that the allocator never refused a node the model chose nor
// took other GPUs than the model expected, and that the run is
// deterministic per seed.
func TestModelAgreesWithAllocator(t *testing.T) {
	var pods []Pod
	for _, m := range []int{100, 250, 300, 470, 500, 810, 1000} {
		pods = append(pods, pod("share", 1, m))
	}
	pods = append(pods, pod("two", 2, 1000), pod("four", 4, 1000), Pod{Name: "cpu", Request: placement.Request{CPU: 8000, Memory: 4096}})
	fleet := NewFleet(append(nodes(6, 8, "V100M32"), nodes(6, 2, "T4")...))
	for _, policy := range Policies {
		t.Run(string(policy), func(t *testing.T) {
			opts := Options{Policy: policy, Seeds: 2, Arrivals: 1.2, Weight: DefaultWeight, Workers: 2}
			r, err := Run(context.Background(), fleet, pods, opts)
			if err != nil {
				t.Fatal(err)
			}
			if r.ModelMisses != 0 || r.AllocatorCalls == 0 {
				t.Errorf("%d model misses in %d allocator calls", r.ModelMisses, r.AllocatorCalls)
			}
			if r.PodsFailed == 0 {
				t.Error("no pod failed at 120 % arrivals: the run did not fill the fleet")
			}
			if len(r.Curve) != 121 || r.Curve[120].ArrivedPercent < 119.9 {
				t.Errorf("curve has %d points, last %+v", len(r.Curve), r.Curve[len(r.Curve)-1])
			}
			again, err := Run(context.Background(), fleet, pods, opts)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(r.UnallocatedPerSeed, again.UnallocatedPerSeed); diff != "" {
				t.Errorf("same seeds, different results (-first +second):\n%s", diff)
			}
		})
	}
}

// TestOpenbSample runs a slice of the openb trace (the first 150 nodes)
// when the shared data is there: Tessera must leave less unallocated than
// the stock scheduler, and the stock scheduler less than whole GPUs.
func TestOpenbSample(t *testing.T) {
	dir := filepath.Join("..", "..", "..", "shared", "data")
	podsFile, err := os.Open(filepath.Join(dir, "openb_pod_list_default.csv"))
	if err != nil {
		t.Skipf("openb trace not available: %v", err)
	}
	defer func() { _ = podsFile.Close() }() // read only: a failed close loses nothing
	nodesFile, err := os.Open(filepath.Join(dir, "openb_node_list_gpu_node.csv"))
	if err != nil {
		t.Skipf("openb trace not available: %v", err)
	}
	defer func() { _ = nodesFile.Close() }() // read only: a failed close loses nothing
	pods, err := ReadPods(podsFile)
	if err != nil {
		t.Fatal(err)
	}
	specs, err := ReadNodes(nodesFile)
	if err != nil {
		t.Fatal(err)
	}
	fleet := NewFleet(specs[:150])
	got := map[Policy]float64{}
	for _, policy := range []Policy{PolicyWhole, PolicyStock, PolicyTessera} {
		r, err := Run(context.Background(), fleet, pods, Options{Policy: policy, Seeds: 2, Arrivals: 1, Weight: DefaultWeight, Workers: 2})
		if err != nil {
			t.Fatal(err)
		}
		got[policy] = r.UnallocatedPercent
	}
	t.Logf("unallocated %%: %v", got)
	if !(got[PolicyTessera] < got[PolicyStock] && got[PolicyStock] < got[PolicyWhole]) {
		t.Errorf("unallocated %v: want tessera < stock < whole", got)
	}
}

func TestSize(t *testing.T) {
	var pods []Pod
	for range 4 {
		pods = append(pods, pod("half", 1, 500))
	}
	fleet := nodes(6, 1, "T4")
	for policy, want := range map[Policy]int64{PolicyWhole: 4, PolicyTessera: 2} {
		s, err := Size(context.Background(), fleet, pods, policy, DefaultWeight)
		if err != nil {
			t.Fatal(err)
		}
		if s.GPUsNeeded != want || s.PodsFailed != 0 || s.DemandGPUs != 2 {
			t.Errorf("%s: %+v, want %d GPUs needed", policy, s, want)
		}
	}
	// Too small a fleet: the GPUs needed are those that place what fits.
	s, err := Size(context.Background(), nodes(3, 1, "T4"), append(pods, pod("big", 2, 1000)), PolicyWhole, DefaultWeight)
	if err != nil {
		t.Fatal(err)
	}
	if s.PodsFailed != 2 || s.GPUsNeeded != 3 {
		t.Errorf("fleet too small: %+v, want 2 failed and 3 GPUs needed", s)
	}
}

func TestWritePlot(t *testing.T) {
	results := []Result{
		{Policy: PolicyStock, UnallocatedPercent: 7, ArrivalsPercent: 100, Curve: []Point{{0, 0}, {50, 50}, {100, 93}}},
		{Policy: PolicyTessera, UnallocatedPercent: 4, ArrivalsPercent: 100, Curve: []Point{{0, 0}, {50, 50}, {100, 96}}},
	}
	var buf bytes.Buffer
	if err := WritePlot(&buf, "test", results); err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(&buf)
	if err != nil {
		t.Fatal(err)
	}
	found := map[Policy]bool{}
	b := img.Bounds()
	for x := b.Min.X; x < b.Max.X; x++ {
		for y := b.Min.Y; y < b.Max.Y; y++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			for p, c := range policyColors {
				if uint8(r>>8) == c.R && uint8(g>>8) == c.G && uint8(bl>>8) == c.B {
					found[p] = true
				}
			}
		}
	}
	if !found[PolicyStock] || !found[PolicyTessera] || found[PolicyWhole] {
		t.Errorf("colours drawn: %v, want stock and tessera only", found)
	}
}

func TestMirror(t *testing.T) {
	pods := []Pod{pod("half", 1, 500), pod("whole", 1, 1000)}
	m, err := NewMirror(nodes(2, 1, "T4"), pods)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"node-a", "node-b"}, m.Best(pods[0])); diff != "" {
		t.Errorf("empty nodes tie (-want +got):\n%s", diff)
	}
	if gpus, err := m.Record(context.Background(), "node-a", pods[0]); err != nil || !cmp.Equal(gpus, []int{0}) {
		t.Fatalf("Record: %v %v", gpus, err)
	}
	// LeastAllocated now prefers the other node, and only it has a whole GPU.
	if diff := cmp.Diff([]string{"node-b"}, m.Best(pods[0])); diff != "" {
		t.Errorf("after one share (-want +got):\n%s", diff)
	}
	if _, err := m.Record(context.Background(), "node-b", pods[1]); err != nil {
		t.Fatal(err)
	}
	if best := m.Best(pods[1]); len(best) != 0 {
		t.Errorf("no idle GPU left, model still offers %v", best)
	}
	if spec := m.ClaimSpec(pods[0]); spec.Devices.Requests[0].Exactly.DeviceClassName != "shared.gpu.tessera.dev" {
		t.Errorf("claim for a share: %+v", spec)
	}
	if _, err := m.Record(context.Background(), "node-x", pods[0]); err == nil {
		t.Error("unknown node accepted")
	}
}

// FGD's scheduler breaks ties by a fixed node order, so pods that score the
// same everywhere (here CPU-only pods: they change no node's FGD measure)
// all go to one node instead of spreading.
func TestFGDTiesGoToOneNode(t *testing.T) {
	var pods []Pod
	for range 6 {
		pods = append(pods, Pod{Name: "cpu", Request: placement.Request{CPU: 1000, Memory: 1024}})
	}
	sched, failed, err := placeInOrder(context.Background(), NewFleet(nodes(8, 2, "T4")), pods, PolicyFGD, DefaultWeight)
	if err != nil || failed != 0 {
		t.Fatalf("%d failed, err %v", failed, err)
	}
	used := 0
	for _, st := range sched.states {
		if st.node.CPU < 32000 {
			used++
		}
	}
	if used != 1 {
		t.Errorf("tied pods went to %d nodes, want 1", used)
	}
}

// FGD's scheduler compares nodes by its integer score (placement.FGDScore),
// not by the delta: of two nodes whose deltas differ by less than a score
// point, the one first in its node order wins.
func TestFGDScoresNodesByItsIntegerScore(t *testing.T) {
	fleet := NewFleet([]NodeSpec{
		{Name: "a", CPU: 32000, Memory: 128 << 10, GPUs: 1, Model: "T4"},
		{Name: "b", CPU: 32000, Memory: 128 << 10, GPUs: 1, Model: "P100"},
	})
	p := pod("share", 1, 100)
	w, err := placement.NewWorkload([]placement.Request{p.Request})
	if err != nil {
		t.Fatal(err)
	}
	s := newScheduler(fleet, w, Options{Policy: PolicyFGD, Weight: DefaultWeight}, 1)
	// Placing the share lowers this measure by 10 on node a and by 30 on
	// node b: both score 50.
	s.measure = func(_ placement.Workload, n placement.Node) float64 {
		if n.Model == "T4" {
			return 0.1 * float64(n.FreeGPU())
		}
		return 0.3 * float64(n.FreeGPU())
	}
	s.rank = []int{0, 1}
	if node, _ := s.Pick(p, nil); node != 0 {
		t.Errorf("picked node %d, want 0 (tied with node 1, first in the node order)", node)
	}
}

// FGD's simulator measures fragmentation against its typical pods: requests
// told apart without memory, only the commonest making 95 % of them.
func TestFGDMeasuresAgainstTypicalRequests(t *testing.T) {
	var pods []Pod
	for i := range 20 {
		p := pod("share", 1, 500)
		p.Request.Memory = int64(1024 * (1 + i%2)) // two memory sizes, one request for FGD
		pods = append(pods, p)
	}
	pods = append(pods, pod("rare", 1, 1000)) // 1 of 21: beyond 95 %
	fleet := NewFleet(nodes(2, 1, "T4"))
	w, err := workloadOf(pods, fleet)
	if err != nil {
		t.Fatal(err)
	}
	s := newScheduler(fleet, w, Options{Policy: PolicyFGD, Weight: DefaultWeight}, 1)
	want := []placement.Class{{Request: placement.Request{CPU: 1000, GPUs: 1, Milli: 500}, Weight: 1}}
	if diff := cmp.Diff(want, s.workload.Classes); diff != "" {
		t.Errorf("FGD's workload (-want +got):\n%s", diff)
	}
}

// With Shuffle the replay starts with every pod of the trace once, as FGD's
// own simulator replays it; without, every pod is drawn with replacement,
// the sequence the figures of docs/benchmarks.md were measured with.
func TestArrivals(t *testing.T) {
	const n = 50
	next := arrivals(3, n, true)
	seen := map[int]bool{}
	for range n {
		seen[next()] = true
	}
	if len(seen) != n {
		t.Errorf("shuffled: %d distinct pods among the first %d, want all", len(seen), n)
	}
	if i := next(); i < 0 || i >= n {
		t.Errorf("after the trace: index %d", i)
	}
	next, draw := arrivals(3, n, false), newDraw(3)
	seen = map[int]bool{}
	for range n {
		i := next()
		seen[i] = true
		if want := draw.IntN(n); i != want {
			t.Fatalf("drawn: %d, want %d", i, want)
		}
	}
	if len(seen) == n {
		t.Error("drawn with replacement, yet every pod once")
	}
}
