package scheduling

import (
	"context"
	"math/rand/v2"
	"testing"

	"github.com/tessera-gpu/tessera/pkg/inventory"
)

func h200Node(t testing.TB, gpus int) []inventory.GPU {
	t.Helper()
	h, _ := newHardwareTB(t, "dgxh200", gpus)
	return h.node.GPUs
}

// TestFirstFitMatchesAllocator checks the packing benchmark's model of the
// allocator against the allocator itself, request by request.
func TestFirstFitMatchesAllocator(t *testing.T) {
	ctx := context.Background()
	for seq := range 5 {
		rng := rand.New(rand.NewPCG(uint64(seq), 7))
		h, cluster := newHardware(t, "dgxh200", 8)
		gpus := builtNode(h.node.GPUs)
		ff := NewFirstFit(gpus)
		profiles := profileNames(h)
		for step := range 64 {
			name := profiles[rng.IntN(len(profiles))]
			want := ff.Place(name)
			got := allocateOne(ctx, t, cluster, name)
			if got != want {
				t.Fatalf("sequence %d step %d, %s: allocator chose %q, first-fit model %q", seq, step, name, got, want)
			}
			if got == "" {
				break
			}
		}
	}
}

// TestOptimumBoundsFirstFit: no device order or choice can beat the
// exhaustive search, weighed by a demand or not.
func TestOptimumBoundsFirstFit(t *testing.T) {
	gpus := h200Node(t, 8)
	opt := NewOptimum(gpus[0])
	demand := WarmDemand(rand.New(rand.NewPCG(5, 5)), gpus[0].MIG.Profiles, nil, 300)
	for seq := range 200 {
		r := PackingWeighted(rand.New(rand.NewPCG(uint64(seq), 1)), gpus, opt, demand)
		if r.Tessera > r.Best+1e-9 || r.Ascending > r.Best+1e-9 || r.BestFit > r.Best+1e-9 || r.Weighted > r.Best+1e-9 || r.Weighted == 0 {
			t.Fatalf("sequence %d: first fit beat the optimum: %+v", seq, r)
		}
	}
}

func TestOptimumSmallCases(t *testing.T) {
	gpus := h200Node(t, 1)
	opt := NewOptimum(gpus[0])
	count := func(pairs map[string]int) []int {
		out := make([]int, len(gpus[0].MIG.Profiles))
		for i, p := range gpus[0].MIG.Profiles {
			out[i] = pairs[p.Name]
		}
		return out
	}
	tests := map[string]struct {
		need map[string]int
		want bool
	}{
		"seven 1g":          {map[string]int{"1g.18gb": 7}, true},
		"eight 1g":          {map[string]int{"1g.18gb": 8}, false},
		"4g and 3g":         {map[string]int{"4g.71gb": 1, "3g.71gb": 1}, true},
		"two 4g":            {map[string]int{"4g.71gb": 2}, false},
		"two +me":           {map[string]int{"1g.18gb+me": 2}, false},
		"+me and 3g and 2g": {map[string]int{"1g.18gb+me": 1, "3g.71gb": 1, "2g.35gb": 1}, true},
		"7g and 1g":         {map[string]int{"7g.141gb": 1, "1g.18gb": 1}, false},
		"four 1g.35gb":      {map[string]int{"1g.35gb": 4}, true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := opt.Feasible(count(tc.need), 1); got != tc.want {
				t.Errorf("Feasible = %v, want %v", got, tc.want)
			}
		})
	}
}

// allocateOne has the allocator place a claim of one partition of the
// profile and returns the device it took, "" when none fits.
func allocateOne(ctx context.Context, t *testing.T, cluster *Cluster, profile string) string {
	t.Helper()
	result, err := cluster.Allocate(ctx, MIG(profile, 1))
	if err != nil {
		t.Fatal(err)
	}
	if result == nil {
		return ""
	}
	return result.Devices.Results[0].Device
}
