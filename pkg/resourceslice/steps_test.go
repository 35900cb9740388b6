package resourceslice_test

import (
	"fmt"
	"testing"

	resourceapi "k8s.io/api/resource/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	draslices "k8s.io/dynamic-resource-allocation/resourceslice"

	"github.com/tessera-gpu/tessera/pkg/resourceslice"
)

func TestStepsChangeOneSliceAtATime(t *testing.T) {
	build := func(gpus int, prepared ...string) draslices.DriverResources {
		p := map[string]bool{}
		for _, d := range prepared {
			p[d] = true
		}
		return resourceslice.Build("n1", node(gpus), resourceslice.Options{WithdrawBlocked: true, Prepared: p})
	}
	idle := build(4)
	tests := map[string]struct {
		prev      *draslices.DriverResources
		next      draslices.DriverResources
		wantSteps int
	}{
		"first publication":          {nil, idle, 1},
		"unchanged":                  {&idle, idle, 1},
		"one GPU prepared":           {&idle, build(4, "gpu-1"), 1},
		"a claim of three GPUs":      {&idle, build(4, "gpu-0", "gpu-2", "gpu-3"), 3},
		"three GPUs freed together":  {new(build(4, "gpu-0", "gpu-1-shared", "gpu-3")), idle, 3},
		"one freed, one prepared":    {new(build(4, "gpu-0")), build(4, "gpu-2-mig-1g18gb-0"), 2},
		"a GPU more (slices change)": {&idle, build(5, "gpu-0", "gpu-1"), 1},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			steps := resourceslice.Steps(tc.prev, tc.next)
			if len(steps) != tc.wantSteps {
				t.Fatalf("%d steps, want %d", len(steps), tc.wantSteps)
			}
			if !apiequality.Semantic.DeepEqual(steps[len(steps)-1], tc.next) {
				t.Errorf("the last step is not the publication asked for")
			}
			if tc.prev == nil || len(steps) == 1 {
				return
			}
			oneSliceEach(t, *tc.prev, steps)
		})
	}
}

// TestStepsLeavePrevUntouched: the steps are new values; what the controller
// was given before is not rewritten under it.
func TestStepsLeavePrevUntouched(t *testing.T) {
	prev := resourceslice.Build("n1", node(4), resourceslice.Options{WithdrawBlocked: true})
	keep := *prev.DeepCopy()
	next := resourceslice.Build("n1", node(4), resourceslice.Options{WithdrawBlocked: true, Prepared: map[string]bool{"gpu-0": true, "gpu-3": true}})
	resourceslice.Steps(&prev, next)
	if !apiequality.Semantic.DeepEqual(prev, keep) {
		t.Error("Steps changed its prev argument")
	}
}

// oneSliceEach fails the test for each step that changes other than one slice
// of the one before, from first.
func oneSliceEach(t *testing.T, first draslices.DriverResources, steps []draslices.DriverResources) {
	t.Helper()
	from := first
	for i, step := range steps {
		if n := changedSlices(from, step); n != 1 {
			t.Errorf("step %d changes %d slices, want 1", i, n)
		}
		from = step
	}
}

func changedSlices(a, b draslices.DriverResources) int {
	n := 0
	for name, pool := range b.Pools {
		for i, s := range pool.Slices {
			if !apiequality.Semantic.DeepEqual(a.Pools[name].Slices[i], s) {
				n++
			}
		}
	}
	return n
}

// stored is the pool as the publication controller writes it: slice i named
// with its index in hexadecimal before the first '-', all of generation gen.
func stored(res draslices.DriverResources, pool string, gen int64) []resourceapi.ResourceSlice {
	var out []resourceapi.ResourceSlice
	slices := res.Pools[pool].Slices
	for i, s := range slices {
		out = append(out, resourceapi.ResourceSlice{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%05x-gpu.tessera.dev-%s-%d", i, pool, 7*i+3)},
			Spec: resourceapi.ResourceSliceSpec{
				Pool:           resourceapi.ResourcePool{Name: pool, Generation: gen, ResourceSliceCount: int64(len(slices))},
				Devices:        s.Devices,
				SharedCounters: s.SharedCounters,
			},
		})
	}
	return out
}

// TestStepsFromWhatTheAPIServerHolds: this instance last handed over an idle
// node; the other instance of a rolling update has since published GPU 1
// prepared; now GPU 1 is free again and GPU 2 prepared. Counted from this
// instance's last publication the change is one step, which changes two of
// the stored slices (the controller would bump the generation); counted from
// what the API server holds (Held) it is two steps of one stored slice each.
func TestStepsFromWhatTheAPIServerHolds(t *testing.T) {
	build := func(prepared ...string) draslices.DriverResources {
		p := map[string]bool{}
		for _, d := range prepared {
			p[d] = true
		}
		return resourceslice.Build("n1", node(4), resourceslice.Options{WithdrawBlocked: true, Prepared: p})
	}
	handed, other, next := build(), build("gpu-1"), build("gpu-2")
	if steps := resourceslice.Steps(&handed, next); len(steps) != 1 || changedSlices(other, steps[0]) != 2 {
		t.Fatalf("counted from what this instance handed over: %d steps, the first changing %d stored slices; want 1 changing 2 (the case Held is for)",
			len(steps), changedSlices(other, steps[0]))
	}
	held, ok := resourceslice.Held(handed, "n1", stored(other, "n1", 3))
	if !ok {
		t.Fatal("Held refused a whole pool of one generation")
	}
	if !apiequality.Semantic.DeepEqual(held, other) {
		t.Fatal("Held is not what the API server holds")
	}
	steps := resourceslice.Steps(&held, next)
	if len(steps) != 2 || !apiequality.Semantic.DeepEqual(steps[1], next) {
		t.Fatalf("counted from what the API server holds: %d steps, want 2 ending in the publication asked for", len(steps))
	}
	oneSliceEach(t, other, steps)
}

// TestHeldRefusesWhatIsNotOnePool: where the API server does not hold the
// whole pool at one generation in the layout handed over, the controller
// bumps the generation whatever it is handed, and Held says so.
func TestHeldRefusesWhatIsNotOnePool(t *testing.T) {
	prev := resourceslice.Build("n1", node(2), resourceslice.Options{WithdrawBlocked: true})
	good := func() []resourceapi.ResourceSlice { return stored(prev, "n1", 1) }
	if _, ok := resourceslice.Held(prev, "n1", good()); !ok {
		t.Fatal("Held refused the pool as handed over")
	}
	tests := map[string]func([]resourceapi.ResourceSlice) []resourceapi.ResourceSlice{
		"none stored":     func([]resourceapi.ResourceSlice) []resourceapi.ResourceSlice { return nil },
		"a slice missing": func(s []resourceapi.ResourceSlice) []resourceapi.ResourceSlice { return s[1:] },
		"a slice more":    func(s []resourceapi.ResourceSlice) []resourceapi.ResourceSlice { return append(s, s[0]) },
		"two generations": func(s []resourceapi.ResourceSlice) []resourceapi.ResourceSlice { s[1].Spec.Pool.Generation++; return s },
		"another count": func(s []resourceapi.ResourceSlice) []resourceapi.ResourceSlice {
			s[0].Spec.Pool.ResourceSliceCount++
			return s
		},
		"another pool": func(s []resourceapi.ResourceSlice) []resourceapi.ResourceSlice { s[0].Spec.Pool.Name = "n2"; return s },
		"a name with no index": func(s []resourceapi.ResourceSlice) []resourceapi.ResourceSlice {
			s[0].Name = "gpu.tessera.dev"
			return s
		},
		"an index out of range": func(s []resourceapi.ResourceSlice) []resourceapi.ResourceSlice {
			s[0].Name = fmt.Sprintf("%05x-gpu.tessera.dev-n1-1", len(s))
			return s
		},
		"an index of another length": func(s []resourceapi.ResourceSlice) []resourceapi.ResourceSlice {
			s[0].Name = "0-gpu.tessera.dev-n1-1"
			return s
		},
		"an index twice": func(s []resourceapi.ResourceSlice) []resourceapi.ResourceSlice { s[1].Name = s[0].Name; return s },
	}
	for name, change := range tests {
		t.Run(name, func(t *testing.T) {
			if held, ok := resourceslice.Held(prev, "n1", change(good())); ok || !apiequality.Semantic.DeepEqual(held, prev) {
				t.Errorf("Held = ok %v; want false and prev back", ok)
			}
		})
	}
	if _, ok := resourceslice.Held(prev, "n2", good()); ok {
		t.Error("Held took slices for a pool it was not handed")
	}
}
