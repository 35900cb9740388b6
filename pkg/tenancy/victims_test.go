package tenancy_test

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/types"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

var t0 = time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC)

// running is a candidate of tenant holding one whole GPU of gpuGiB, started
// minutes after t0.
func running(tenant, name string, priority int32, minutes int, gpuGiB int64) tenancy.RunningClaim {
	return tenancy.RunningClaim{
		Claim: types.NamespacedName{Namespace: tenant, Name: name}, Tenant: tenant, Priority: priority,
		Started: t0.Add(time.Duration(minutes) * time.Minute),
		Cost:    tenancy.Usage{Memory: gpuGiB * gib, Devices: map[string]int64{gpuapi.ClassGPU: 1}},
	}
}

func holding(usedGiB, guaranteeGiB int64) tenancy.TenantHolding {
	return tenancy.TenantHolding{Used: tenancy.Usage{Memory: usedGiB * gib}, Guarantee: tenancy.Usage{Memory: guaranteeGiB * gib}}
}

func TestChooseVictims(t *testing.T) {
	tests := map[string]struct {
		candidates []tenancy.RunningClaim
		tenants    map[string]tenancy.TenantHolding
		need       tenancy.Usage
		want       []string
		wantOK     bool
	}{
		"most recently started first": {
			candidates: []tenancy.RunningClaim{running("b", "old", 0, 1, 80), running("b", "new", 0, 5, 80), running("b", "mid", 0, 3, 80)},
			tenants:    map[string]tenancy.TenantHolding{"b": holding(240, 0)},
			need:       tenancy.Usage{Memory: 80 * gib},
			want:       []string{"b/new"}, wantOK: true,
		},
		"lowest priority before recency": {
			candidates: []tenancy.RunningClaim{running("b", "new-high", 100, 5, 80), running("b", "old-low", 0, 1, 80)},
			tenants:    map[string]tenancy.TenantHolding{"b": holding(160, 0)},
			need:       tenancy.Usage{Memory: 80 * gib},
			want:       []string{"b/old-low"}, wantOK: true,
		},
		"never below the guarantee": {
			candidates: []tenancy.RunningClaim{running("b", "b1", 0, 5, 80), running("b", "b2", 0, 4, 80), running("c", "c1", 10, 1, 80)},
			// b borrows one GPU only: the second is taken from c.
			tenants: map[string]tenancy.TenantHolding{"b": holding(160, 80), "c": holding(80, 0)},
			need:    tenancy.Usage{Memory: 160 * gib},
			want:    []string{"b/b1", "c/c1"}, wantOK: true,
		},
		"a tenant at its guarantee is never touched": {
			candidates: []tenancy.RunningClaim{running("b", "b1", 0, 5, 80)},
			tenants:    map[string]tenancy.TenantHolding{"b": holding(80, 80)},
			need:       tenancy.Usage{Memory: 80 * gib},
			wantOK:     false,
		},
		"not enough: nothing is evicted": {
			candidates: []tenancy.RunningClaim{running("b", "b1", 0, 5, 80)},
			tenants:    map[string]tenancy.TenantHolding{"b": holding(80, 0)},
			need:       tenancy.Usage{Memory: 160 * gib},
			wantOK:     false,
		},
		"never more than needed: a later large victim makes an earlier small one useless": {
			candidates: []tenancy.RunningClaim{running("b", "small", 0, 5, 20), running("b", "large", 10, 1, 80)},
			tenants:    map[string]tenancy.TenantHolding{"b": holding(100, 0)},
			need:       tenancy.Usage{Memory: 80 * gib},
			want:       []string{"b/large"}, wantOK: true,
		},
		"the starving tenant's own claims and unknown tenants are never taken": {
			candidates: []tenancy.RunningClaim{running("a", "own", 0, 9, 80), running("x", "unknown", 0, 8, 80), running("b", "b1", 5, 1, 80)},
			tenants:    map[string]tenancy.TenantHolding{"a": holding(80, 0), "b": holding(80, 0)},
			need:       tenancy.Usage{Memory: 80 * gib},
			want:       []string{"b/b1"}, wantOK: true,
		},
		"devices of a class: a claim that frees none is skipped": {
			candidates: []tenancy.RunningClaim{
				{Claim: types.NamespacedName{Namespace: "b", Name: "mig"}, Tenant: "b", Started: t0.Add(time.Hour),
					Cost: tenancy.Usage{Memory: 10 * gib, Devices: map[string]int64{gpuapi.ClassMIG: 1}}},
				running("b", "gpu", 0, 1, 80),
			},
			tenants: map[string]tenancy.TenantHolding{"b": holding(90, 0)},
			need:    tenancy.Usage{Devices: map[string]int64{gpuapi.ClassGPU: 1}},
			want:    []string{"b/gpu"}, wantOK: true,
		},
		"a device guarantee protects too": {
			candidates: []tenancy.RunningClaim{running("b", "b1", 0, 5, 80)},
			tenants: map[string]tenancy.TenantHolding{"b": {
				Used:      tenancy.Usage{Memory: 80 * gib, Devices: map[string]int64{gpuapi.ClassGPU: 1}},
				Guarantee: tenancy.Usage{Devices: map[string]int64{gpuapi.ClassGPU: 1}},
			}},
			need:   tenancy.Usage{Memory: 80 * gib},
			wantOK: false,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			victims, ok := tenancy.ChooseVictims(tc.candidates, tc.tenants, "a", tc.need)
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

// TestChooseVictimsInvariants checks, on seeded random fleets, what every
// choice must hold: the victims free what is needed; removing any one of
// them would not (never more than needed); no tenant is taken below its
// guarantee, so no claim of a tenant at or below it is ever chosen; the
// starving tenant loses nothing; and nothing is evicted when not enough can
// be freed.
func TestChooseVictimsInvariants(t *testing.T) {
	classes := []string{gpuapi.ClassGPU, gpuapi.ClassMIG}
	chosen := 0
	for seed := range uint64(3000) {
		rng := rand.New(rand.NewPCG(seed, 28))
		tenants := map[string]tenancy.TenantHolding{}
		var candidates []tenancy.RunningClaim
		for ti := range 1 + rng.IntN(4) {
			name := fmt.Sprintf("t%d", ti)
			used := tenancy.Usage{Devices: map[string]int64{}}
			for ci := range rng.IntN(6) {
				class := classes[rng.IntN(len(classes))]
				c := tenancy.RunningClaim{
					Claim: types.NamespacedName{Namespace: name, Name: fmt.Sprintf("c%d", ci)}, Tenant: name,
					Priority: int32(rng.IntN(3)), Started: t0.Add(time.Duration(rng.IntN(5)) * time.Minute),
					Cost: tenancy.Usage{Memory: int64(1+rng.IntN(8)) * 10 * gib, Devices: map[string]int64{class: 1}},
				}
				used.Memory += c.Cost.Memory
				used.Devices[class]++
				candidates = append(candidates, c)
			}
			g := tenancy.Usage{Memory: int64(rng.IntN(int(used.Memory/gib)+20)) * gib, Devices: map[string]int64{}}
			if rng.IntN(2) == 0 {
				g.Devices[gpuapi.ClassGPU] = int64(rng.IntN(3))
			}
			tenants[name] = tenancy.TenantHolding{Used: used, Guarantee: g}
		}
		need := tenancy.Usage{Memory: int64(rng.IntN(200)) * gib, Devices: map[string]int64{}}
		if rng.IntN(2) == 0 {
			need.Devices[classes[rng.IntN(len(classes))]] = int64(1 + rng.IntN(2))
		}
		starving := "t0"

		victims, ok := tenancy.ChooseVictims(candidates, tenants, starving, need)
		if !ok {
			if victims != nil {
				t.Fatalf("seed %d: not enough, yet victims %v", seed, victims)
			}
			continue
		}
		chosen++
		freed := tenancy.Usage{Devices: map[string]int64{}}
		removed := map[string]tenancy.Usage{}
		seen := map[types.NamespacedName]bool{}
		for _, v := range victims {
			if seen[v.Claim] {
				t.Fatalf("seed %d: %s chosen twice", seed, v.Claim)
			}
			seen[v.Claim] = true
			if v.Tenant == starving {
				t.Fatalf("seed %d: the starving tenant's claim %s chosen", seed, v.Claim)
			}
			freed = plus(freed, v.Cost)
			removed[v.Tenant] = plus(removed[v.Tenant], v.Cost)
		}
		if !enough(freed, need) {
			t.Fatalf("seed %d: victims free %+v, need %+v", seed, freed, need)
		}
		for i, v := range victims {
			if enough(plus(freed, negate(v.Cost)), need) {
				t.Fatalf("seed %d: victim %d (%s) is not needed", seed, i, v.Claim)
			}
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
	// The fleets are drawn so that many choices succeed; otherwise the
	// invariants above would hold vacuously.
	if chosen < 500 {
		t.Errorf("only %d of 3000 fleets had a choice", chosen)
	}
	t.Logf("%d of 3000 fleets had a choice", chosen)
}

func plus(a, b tenancy.Usage) tenancy.Usage {
	out := tenancy.Usage{Memory: a.Memory + b.Memory, Devices: map[string]int64{}}
	for c, n := range a.Devices {
		out.Devices[c] += n
	}
	for c, n := range b.Devices {
		out.Devices[c] += n
	}
	return out
}

func negate(a tenancy.Usage) tenancy.Usage {
	out := tenancy.Usage{Memory: -a.Memory, Devices: map[string]int64{}}
	for c, n := range a.Devices {
		out.Devices[c] = -n
	}
	return out
}

func enough(freed, need tenancy.Usage) bool {
	if freed.Memory < need.Memory {
		return false
	}
	for c, n := range need.Devices {
		if freed.Devices[c] < n {
			return false
		}
	}
	return true
}
