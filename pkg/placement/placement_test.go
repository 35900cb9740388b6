package placement

import (
	"fmt"
	"math"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func share(milli int) Request { return Request{CPU: 1000, Memory: 1024, GPUs: 1, Milli: milli} }

func whole(n int) Request { return Request{CPU: 1000, Memory: 1024, GPUs: n, Milli: WholeGPU} }

func node(free ...int) Node { return Node{CPU: 64000, Memory: 256 << 10, Free: free} }

func TestFirstFit(t *testing.T) {
	tests := map[string]struct {
		node Node
		req  Request
		want []int
	}{
		"share on the first GPU with room":   {node(300, 1000, 600), share(500), []int{1}},
		"share exactly filling a GPU":        {node(500, 1000), share(500), []int{0}},
		"whole GPUs skip shared ones":        {node(900, 1000, 1000, 1000), whole(2), []int{1, 2}},
		"too few idle GPUs":                  {node(900, 1000), whole(2), nil},
		"share too big for every GPU":        {node(400, 300), share(500), nil},
		"no CPU left":                        {Node{CPU: 500, Memory: 1 << 20, Free: []int{1000}}, share(100), nil},
		"CPU-only request takes no GPU":      {node(1000), Request{CPU: 10}, nil},
		"no memory left for a whole request": {Node{CPU: 1 << 20, Memory: 10, Free: []int{1000}}, whole(1), nil},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, tc.node.FirstFit(tc.req)); diff != "" {
				t.Errorf("FirstFit (-want +got):\n%s", diff)
			}
		})
	}
}

func TestWith(t *testing.T) {
	n := node(1000, 1000, 700)
	got := n.With(share(300), []int{2}).With(whole(1), []int{0})
	want := Node{CPU: 62000, Memory: 256<<10 - 2048, Free: []int{0, 1000, 400}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("With (-want +got):\n%s", diff)
	}
	if n.Free[2] != 700 {
		t.Errorf("With changed the original node: %v", n.Free)
	}
}

func mustWorkload(t *testing.T, reqs ...Request) Workload {
	t.Helper()
	w, err := NewWorkload(reqs)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func TestNewWorkload(t *testing.T) {
	w := mustWorkload(t, share(500), share(500), whole(1), Request{CPU: 5, Milli: 700})
	want := []Class{{share(500), 0.5}, {whole(1), 0.25}, {Request{CPU: 5}, 0.25}}
	if diff := cmp.Diff(want, w.Classes); diff != "" {
		t.Errorf("classes (-want +got):\n%s", diff)
	}
	if _, err := NewWorkload(nil); err == nil {
		t.Error("empty workload accepted")
	}
	if _, err := NewWorkload([]Request{{GPUs: 1, Milli: 1500}}); err == nil {
		t.Error("1.5 GPUs per GPU accepted")
	}
}

func TestMeasures(t *testing.T) {
	// Half the requests take 0.5 GPU and 1 CPU, half a whole GPU and 1 CPU.
	w := mustWorkload(t, share(500), whole(1))
	tests := map[string]struct {
		node          Node
		fgd, stranded float64
	}{
		"idle node": {node(1000, 1000), 0, 0},
		// The 0.3 left is too small for either class (FGD: 0.3 each);
		// packing leaves it too (stranded: 0.3 each).
		"remainder too small for anything": {node(300, 1000), 300, 300},
		// 0.9 fits a share, so FGD sees no fragment for shares; packing
		// shares leaves 0.4 of it, and whole GPUs cannot use any of it.
		"remainder that fits one share": {node(900), 0.5*0 + 0.5*900, 0.5*400 + 0.5*900},
		// One CPU left: one request fits, so FGD counts only the partial
		// GPUs; but after it the other GPUs are stranded.
		"CPU for one request only": {Node{CPU: 1000, Memory: 1 << 20, Free: []int{1000, 1000, 1000}}, 0, 0.5*2500 + 0.5*2000},
		"no CPU at all":            {Node{CPU: 0, Memory: 1 << 20, Free: []int{1000, 500}}, 1500, 1500},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := w.FGD(tc.node); math.Abs(got-tc.fgd) > 1e-9 {
				t.Errorf("FGD = %v, want %v", got, tc.fgd)
			}
			if got := w.Stranded(tc.node); math.Abs(got-tc.stranded) > 1e-9 {
				t.Errorf("Stranded = %v, want %v", got, tc.stranded)
			}
			if got := w.Fragmentation(tc.node); math.Abs(got-tc.fgd-tc.stranded) > 1e-9 {
				t.Errorf("Fragmentation = %v, want %v", got, tc.fgd+tc.stranded)
			}
		})
	}
}

// TestDeltaPrefersPacking: a share should go where it completes a GPU, not
// break an idle one, and a whole GPU should not be taken from a node whose
// other GPUs are in use by shares when an idle node exists.
func TestDeltaPrefersPacking(t *testing.T) {
	w := mustWorkload(t, share(500), share(500), whole(1), whole(2))
	half, idle := node(500, 1000), node(1000, 1000)
	dHalf, _, _ := w.Assess(Workload.Fragmentation, half, share(500), ChoiceFirstFit)
	dIdle, _, _ := w.Assess(Workload.Fragmentation, idle, share(500), ChoiceFirstFit)
	if dHalf >= dIdle {
		t.Errorf("share: delta on half-used node %v, on idle node %v; want the half-used node better", dHalf, dIdle)
	}
	if _, _, ok := w.Assess(Workload.Fragmentation, node(400), share(500), ChoiceFirstFit); ok {
		t.Error("Assess accepted a request that does not fit")
	}
}

func TestChoiceFGD(t *testing.T) {
	w := mustWorkload(t, share(500), share(700))
	n := node(1000, 700, 500)
	// First fit takes GPU 0; FGD fills GPU 2 exactly.
	if diff := cmp.Diff([]int{0}, ChoiceFirstFit(w, Workload.FGD, n, share(500))); diff != "" {
		t.Errorf("first fit (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]int{2}, ChoiceFGD(w, Workload.FGD, n, share(500))); diff != "" {
		t.Errorf("FGD (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]int{1, 2}, ChoiceFGD(w, Workload.FGD, node(0, 1000, 1000), whole(2))); diff != "" {
		t.Errorf("whole GPUs (-want +got):\n%s", diff)
	}
}

// FGD's scheduler compares GPUs by its integer score, not by the delta: a
// share goes to the first GPU whose score is highest, even where a later
// GPU's delta is smaller by less than a score point.
func TestChoiceFGDTiesGoToTheFirstGPU(t *testing.T) {
	w := mustWorkload(t, share(100))
	// Placing on GPU 0 lowers this measure by 10, on GPU 1 by 30: both
	// score 50.
	m := func(_ Workload, n Node) float64 {
		return 0.1*float64(n.Free[0]) + 0.3*float64(n.Free[1])
	}
	n := node(1000, 900)
	if d0, d1 := w.Delta(m, n, share(100), []int{0}), w.Delta(m, n, share(100), []int{1}); d0 != -10 || d1 != -30 {
		t.Fatalf("deltas %v, %v; want -10, -30", d0, d1)
	}
	if diff := cmp.Diff([]int{0}, ChoiceFGD(w, m, n, share(100))); diff != "" {
		t.Errorf("FGD (-want +got):\n%s", diff)
	}
}

func TestFGDScore(t *testing.T) {
	for _, c := range []struct {
		delta float64
		want  int64
	}{
		{0, 50}, {-10, 50}, {-39, 50}, {-41, 51}, {1, 49}, {40, 49}, {41, 48},
		{-1000, 73}, {1000, 26}, {-8000, 99}, {8000, 0},
	} {
		if got := FGDScore(c.delta); got != c.want {
			t.Errorf("FGDScore(%v) = %d, want %d", c.delta, got, c.want)
		}
	}
}

func TestNormalize(t *testing.T) {
	// Deltas within Tolerance of the least are the best: they score 50 plus
	// their place in the order, whatever their delta; every further
	// Tolerance costs a point below 50.
	deltas := []float64{5, 5 + Tolerance/2, 5 + Tolerance - 1e-9, 5 + Tolerance, 5 + 3.5*Tolerance, 5 + 1e6, 4 + 1e-12 + 1}
	order := []int64{0, 50, 7, 50, 50, 50, 3}
	got := Normalize(deltas, order, Tolerance)
	want := []int64{50, MaxScore, 57, 49, 47, 0, 53}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Normalize (-want +got):\n%s", diff)
	}
	// Without tolerance only the least delta is among the best.
	if diff := cmp.Diff([]int64{50, 0, 0, 0, 0, 0, 0}, Normalize(deltas, order, 0)); diff != "" {
		t.Errorf("Normalize, tolerance 0 (-want +got):\n%s", diff)
	}
	if len(Normalize(nil, nil, Tolerance)) != 0 {
		t.Error("Normalize(nil) not empty")
	}
}

// TestNodeOrder: the order is a pure function of the name and the salt, uses
// every place, and another salt is another order.
func TestNodeOrder(t *testing.T) {
	seen := map[int64]bool{}
	moved := 0
	for i := range 2000 {
		name := fmt.Sprintf("gpu-node-%04d", i)
		o := NodeOrder(name, 0)
		if o < 0 || o >= OrderLevels {
			t.Fatalf("NodeOrder(%s) = %d, want 0..%d", name, o, OrderLevels-1)
		}
		if NodeOrder(name, 0) != o {
			t.Fatalf("NodeOrder(%s) changed between calls", name)
		}
		seen[o] = true
		if NodeOrder(name, 1) != o {
			moved++
		}
	}
	if len(seen) != OrderLevels {
		t.Errorf("2000 names took %d places of %d", len(seen), OrderLevels)
	}
	if moved < 1800 {
		t.Errorf("salt 1 moved %d of 2000 names, want most", moved)
	}
}

// TestMeasuresCountModels: a request pinned to other GPU models cannot use
// any of a node's GPUs, so both measures count all its free GPU as
// fragmented for that class; a node of unknown model serves every class.
func TestMeasuresCountModels(t *testing.T) {
	v100 := whole(1)
	v100.Models = "V100M16|V100M32"
	w := mustWorkload(t, share(500), v100)
	t4 := Node{CPU: 1 << 20, Memory: 1 << 20, Free: []int{1000, 1000}, Model: "T4"}
	if got, want := w.FGD(t4), 0.5*2000; got != want {
		t.Errorf("FGD on a T4 node = %v, want %v (the V100 class's share of all 2000 free)", got, want)
	}
	if got, want := w.Stranded(t4), 0.5*2000; got != want {
		t.Errorf("Stranded on a T4 node = %v, want %v", got, want)
	}
	if t4.Fits(v100) {
		t.Error("a V100-pinned request fits a T4 node")
	}
	for _, model := range []string{"v100m32", ""} {
		n := t4
		n.Model = model
		if got := w.Fragmentation(n); got != 0 {
			t.Errorf("fragmentation on an idle node of model %q = %v, want 0", model, got)
		}
		if !n.Fits(v100) {
			t.Errorf("a V100-pinned request does not fit a node of model %q", model)
		}
	}
	if got := t4.With(share(500), []int{0}).Model; got != "T4" {
		t.Errorf("With drops the model: %q", got)
	}
}

// TestPressureKeepsPinnedModels: a quarter of the requests may only use T4s
// and a quarter only G2s, but the fleet has three times as many G2s; a
// request that may go anywhere costs more on a T4 node than on an equally
// idle G2 node (FGD's measure alone sees no difference: each node is out of
// reach of a quarter of the requests); without pinned requests nothing
// changes.
func TestPressureKeepsPinnedModels(t *testing.T) {
	t4, g2 := whole(1), whole(1)
	t4.Models, g2.Models = "T4", "G2"
	w := mustWorkload(t, whole(1), whole(1), t4, g2).WithCapacity(map[string]int64{"T4": 8000, "G2": 24000})
	// Pinned demand 0.25 over 8 GPUs against 1 over 32: pressure 1 on T4,
	// 1/3 on G2.
	if got := w.Pressure; math.Abs(got["T4"]-1) > 1e-9 || math.Abs(got["G2"]-1.0/3) > 1e-9 {
		t.Fatalf("pressure %v, want T4 1 and G2 1/3", got)
	}
	idle := func(model string) Node {
		return Node{CPU: 1 << 20, Memory: 1 << 20, Free: []int{1000, 1000, 1000, 1000}, Model: model}
	}
	onT4 := w.Delta(Workload.Fragmentation, idle("T4"), whole(1), []int{0})
	onG2 := w.Delta(Workload.Fragmentation, idle("G2"), whole(1), []int{0})
	if onT4 <= onG2 {
		t.Errorf("an unpinned GPU costs %v on a T4 node and %v on a G2 node: want the T4 dearer", onT4, onG2)
	}
	plain := mustWorkload(t, whole(1), share(500)).WithCapacity(map[string]int64{"T4": 8000, "G2": 24000})
	if plain.Pressure != nil {
		t.Errorf("pressure %v without pinned requests", plain.Pressure)
	}
}
