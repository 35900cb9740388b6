package tenancy_test

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/types"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

// fitsWhenFreed models the allocator's answer: the pod fits when every
// claim of one of ways is gone (each way is one placement the pod could
// take, blocked by those claims). It is monotone, as the allocator is:
// freeing more never makes a pod fit less.
func fitsWhenFreed(ways ...[]string) func([]tenancy.RunningClaim) bool {
	return func(victims []tenancy.RunningClaim) bool {
		gone := map[string]bool{}
		for _, v := range victims {
			gone[v.Claim.String()] = true
		}
		for _, w := range ways {
			if !slices.ContainsFunc(w, func(c string) bool { return !gone[c] }) {
				return true
			}
		}
		return false
	}
}

func TestChooseVictimsToFit(t *testing.T) {
	tests := map[string]struct {
		candidates []tenancy.RunningClaim
		tenants    map[string]tenancy.TenantHolding
		ways       [][]string
		want       []string
		wantOK     bool
	}{
		"fits already: nothing evicted": {
			candidates: []tenancy.RunningClaim{running("b", "b1", 0, 1, 80)},
			tenants:    map[string]tenancy.TenantHolding{"b": holding(80, 0)},
			ways:       [][]string{{}},
			want:       nil, wantOK: true,
		},
		// The newest claim frees nothing the pod can use alone; the next
		// one does. Taking them in order takes both; one suffices.
		"one of two taken in order suffices": {
			candidates: []tenancy.RunningClaim{running("b", "new", 0, 5, 10), running("b", "old", 0, 1, 10)},
			tenants:    map[string]tenancy.TenantHolding{"b": holding(20, 0)},
			ways:       [][]string{{"b/old"}},
			want:       []string{"b/old"}, wantOK: true,
		},
		"lowest priority first": {
			candidates: []tenancy.RunningClaim{running("b", "new-high", 100, 5, 80), running("c", "old-low", 0, 1, 80)},
			tenants:    map[string]tenancy.TenantHolding{"b": holding(80, 0), "c": holding(80, 0)},
			ways:       [][]string{{"b/new-high"}, {"c/old-low"}},
			want:       []string{"c/old-low"}, wantOK: true,
		},
		"a tenant at its guarantee is never touched": {
			candidates: []tenancy.RunningClaim{running("b", "b1", 0, 5, 80)},
			tenants:    map[string]tenancy.TenantHolding{"b": holding(80, 80)},
			ways:       [][]string{{"b/b1"}},
			want:       nil, wantOK: false,
		},
		"never below the guarantee, even when that would fit": {
			candidates: []tenancy.RunningClaim{running("b", "b1", 0, 5, 80), running("b", "b2", 0, 4, 80)},
			tenants:    map[string]tenancy.TenantHolding{"b": holding(160, 80)},
			ways:       [][]string{{"b/b1", "b/b2"}},
			want:       nil, wantOK: false,
		},
		"the starving tenant's own claims are never taken": {
			candidates: []tenancy.RunningClaim{running("a", "a1", 0, 5, 80)},
			tenants:    map[string]tenancy.TenantHolding{"a": holding(80, 0)},
			ways:       [][]string{{"a/a1"}},
			want:       nil, wantOK: false,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			victims, ok := tenancy.ChooseVictimsToFit(tc.candidates, tc.tenants, "a", fitsWhenFreed(tc.ways...))
			var got []string
			for _, v := range victims {
				got = append(got, v.Claim.String())
			}
			if ok != tc.wantOK {
				t.Errorf("ok = %t, want %t", ok, tc.wantOK)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("victims (-want +got):\n%s", diff)
			}
		})
	}
}

// TestChooseVictimsToFitInvariants draws random fleets and random ways for
// a pod to fit and checks what every choice must hold: it fits, no victim
// can be spared, no tenant goes below its guarantee, and the starving
// tenant loses nothing.
func TestChooseVictimsToFitInvariants(t *testing.T) {
	chosen := 0
	for seed := range uint64(3000) {
		rng := rand.New(rand.NewPCG(seed, 29))
		tenants := map[string]tenancy.TenantHolding{}
		var candidates []tenancy.RunningClaim
		var names []string
		for ti := range 1 + rng.IntN(4) {
			name := fmt.Sprintf("t%d", ti)
			used := tenancy.Usage{Devices: map[string]int64{}}
			for ci := range rng.IntN(6) {
				c := tenancy.RunningClaim{
					Claim: types.NamespacedName{Namespace: name, Name: fmt.Sprintf("c%d", ci)}, Tenant: name,
					Priority: int32(rng.IntN(3)), Started: t0.Add(time.Duration(rng.IntN(5)) * time.Minute),
					Cost: tenancy.Usage{Memory: int64(1+rng.IntN(8)) * 10 * gib, Devices: map[string]int64{gpuapi.ClassGPU: 1}},
				}
				used = plus(used, c.Cost)
				candidates = append(candidates, c)
				names = append(names, c.Claim.String())
			}
			g := tenancy.Usage{Memory: int64(rng.IntN(int(used.Memory/gib)+20)) * gib, Devices: map[string]int64{}}
			if rng.IntN(2) == 0 {
				g.Devices[gpuapi.ClassGPU] = int64(rng.IntN(3))
			}
			tenants[name] = tenancy.TenantHolding{Used: used, Guarantee: g}
		}
		var ways [][]string
		for range 1 + rng.IntN(3) {
			var w []string
			for _, n := range names {
				if rng.IntN(4) == 0 {
					w = append(w, n)
				}
			}
			if len(w) > 0 {
				ways = append(ways, w)
			}
		}
		fits := fitsWhenFreed(ways...)
		calls := 0
		counted := func(v []tenancy.RunningClaim) bool { calls++; return fits(v) }
		victims, ok := tenancy.ChooseVictimsToFit(candidates, tenants, "t0", counted)
		if calls > 2*len(candidates)+1 {
			t.Fatalf("seed %d: %d calls of fits for %d candidates", seed, calls, len(candidates))
		}
		if !ok {
			if victims != nil {
				t.Fatalf("seed %d: no fit, yet victims %v", seed, victims)
			}
			continue
		}
		if len(victims) > 0 {
			chosen++
		}
		if !fits(victims) {
			t.Fatalf("seed %d: victims %v do not make the pod fit", seed, victims)
		}
		removed := map[string]tenancy.Usage{}
		for i, v := range victims {
			if v.Tenant == "t0" {
				t.Fatalf("seed %d: the starving tenant's claim %s chosen", seed, v.Claim)
			}
			if fits(slices.Delete(slices.Clone(victims), i, i+1)) {
				t.Fatalf("seed %d: victim %s is not needed", seed, v.Claim)
			}
			removed[v.Tenant] = plus(removed[v.Tenant], v.Cost)
		}
		for name, r := range removed {
			h := tenants[name]
			if h.Used.Memory-r.Memory < h.Guarantee.Memory {
				t.Fatalf("seed %d: tenant %s taken below its memory guarantee", seed, name)
			}
			for c, n := range h.Guarantee.Devices {
				if h.Used.Devices[c]-r.Devices[c] < n {
					t.Fatalf("seed %d: tenant %s taken below its %s guarantee", seed, name, c)
				}
			}
		}
	}
	if chosen < 200 {
		t.Errorf("only %d of 3000 fleets had victims", chosen)
	}
	t.Logf("%d of 3000 fleets had victims", chosen)
}
