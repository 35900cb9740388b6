package resourceslice_test

import (
	"testing"

	apiequality "k8s.io/apimachinery/pkg/api/equality"
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
			from := *tc.prev
			for i, step := range steps {
				if n := changedSlices(from, step); n != 1 {
					t.Errorf("step %d changes %d slices, want 1", i, n)
				}
				from = step
			}
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
