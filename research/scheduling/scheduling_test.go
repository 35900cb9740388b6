package scheduling

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"
)

var models = []string{"dgxa100", "dgxh100", "dgxh200", "dgxb200"}

func profileNames(h *hardware) []string {
	var out []string
	for _, p := range h.node.GPUs[0].MIG.Profiles {
		out = append(out, p.Name)
	}
	return out
}

// randomClaim draws whole GPUs, each MIG profile, shares of random size and
// firstAvailable mixes.
func randomClaim(rng *rand.Rand, profiles []string) *resourceapi.ResourceClaim {
	memory := func() string { return fmt.Sprintf("%dGi", 1+rng.IntN(48)) }
	switch rng.IntN(6) {
	case 0:
		return WholeGPU()
	case 1, 2:
		return MIG(profiles[rng.IntN(len(profiles))], 1)
	case 3:
		return MIG(profiles[rng.IntN(len(profiles))], int64(1+rng.IntN(3)))
	case 4:
		return Share(memory(), int64(1+rng.IntN(60)))
	default:
		return MIGOrShare(profiles[rng.IntN(len(profiles))], memory(), int64(1+rng.IntN(60)))
	}
}

// TestEveryAllocationIsCreatable runs many random sequences of claims and
// frees through the scheduler's allocator on an 8-GPU node of each model and
// mirrors every allocation onto the accurate mock.
func TestEveryAllocationIsCreatable(t *testing.T) {
	sequences, steps := 12, 80
	if testing.Short() {
		sequences, steps = 3, 40
	}
	ctx := context.Background()
	for _, model := range models {
		t.Run(model, func(t *testing.T) {
			allocated, refused := 0, 0
			for seq := range sequences {
				rng := rand.New(rand.NewPCG(uint64(seq), 42))
				h, cluster := newHardware(t, model, 8)
				profiles := profileNames(h)
				var live []types.UID
				for range steps {
					if len(live) > 0 && rng.IntN(4) == 0 {
						i := rng.IntN(len(live))
						claim := cluster.Claims()[live[i]]
						h.release(claim)
						cluster.Free(claim.UID)
						live = append(live[:i], live[i+1:]...)
						continue
					}
					claim := randomClaim(rng, profiles)
					result, err := cluster.Allocate(ctx, claim)
					if err != nil {
						t.Fatal(err)
					}
					if result == nil {
						refused++
						continue
					}
					allocated++
					h.apply(claim, result)
					live = append(live, claim.UID)
				}
				for _, uid := range live {
					h.release(cluster.Claims()[uid])
				}
				for gpu := range h.gpus {
					if n := h.instances(gpu); n != 0 {
						t.Errorf("sequence %d: %d GPU instances left on GPU %d", seq, n, gpu)
					}
				}
			}
			t.Logf("%s: %d claims allocated and created, %d refused", model, allocated, refused)
			if allocated == 0 || refused == 0 {
				t.Errorf("sequences too easy or too hard: %d allocated, %d refused", allocated, refused)
			}
		})
	}
}

// TestEveryPlacementIsAllocatable asks, on an empty GPU, for each
// (profile, placement) NVML reports and expects exactly that device.
func TestEveryPlacementIsAllocatable(t *testing.T) {
	ctx := context.Background()
	for _, model := range models {
		t.Run(model, func(t *testing.T) {
			h, _ := newHardware(t, model, 1)
			n := 0
			for _, p := range h.node.GPUs[0].MIG.Profiles {
				for _, pl := range p.Placements {
					_, cluster := newHardware(t, model, 1)
					claim := MIGAt(p.Name, pl.Start)
					result, err := cluster.Allocate(ctx, claim)
					if err != nil {
						t.Fatal(err)
					}
					if result == nil {
						t.Errorf("%s at %d: not allocatable on an empty GPU", p.Name, pl.Start)
						continue
					}
					h.apply(claim, result)
					allocated := claim.DeepCopy()
					allocated.Status.Allocation = result
					h.release(allocated)
					n++
				}
			}
			if n != 25 {
				t.Errorf("%d placements allocated, want 25", n)
			}
		})
	}
}

// TestSevenOneSliceFitOneGPU fills one GPU with 1g partitions and checks
// that an eighth does not fit.
func TestSevenOneSliceFitOneGPU(t *testing.T) {
	ctx := context.Background()
	for _, model := range models {
		t.Run(model, func(t *testing.T) {
			h, cluster := newHardware(t, model, 1)
			profile := h.node.GPUs[0].MIG.Profiles[0].Name // the plain 1g profile
			claim := MIG(profile, 7)
			result, err := cluster.Allocate(ctx, claim)
			if err != nil {
				t.Fatal(err)
			}
			if result == nil || len(result.Devices.Results) != 7 {
				t.Fatalf("7 x %s did not fit on one GPU: %v", profile, result)
			}
			h.apply(claim, result)
			if got := h.instances(0); got != 7 {
				t.Errorf("%d GPU instances created, want 7", got)
			}
			if result, err := cluster.Allocate(ctx, MIG(profile, 1)); err != nil || result != nil {
				t.Errorf("an eighth %s was allocated: %v %v", profile, result, err)
			}
		})
	}
}

// TestSharesCoLocateAndBlockMIG is the scheduler fact of docs/design.md on one GPU:
// shares of 20Gi and 30Gi land on one shared GPU; a MIG claim waits.
func TestSharesCoLocateAndBlockMIG(t *testing.T) {
	ctx := context.Background()
	h, cluster := newHardware(t, "dgxh200", 1)
	a, b := Share("20Gi", 30), Share("30Gi", 30)
	for _, c := range []*resourceapi.ResourceClaim{a, b} {
		result, err := cluster.Allocate(ctx, c)
		if err != nil || result == nil {
			t.Fatalf("share %s not allocated: %v", c.Name, err)
		}
		if got := result.Devices.Results[0].Device; got != "gpu-0-shared" {
			t.Fatalf("share on %s, want gpu-0-shared", got)
		}
		h.apply(c, result)
	}
	if result, _ := cluster.Allocate(ctx, MIG("1g.18gb", 1)); result != nil {
		t.Fatalf("MIG allocated next to shares: %v", result.Devices.Results)
	}
	if result, _ := cluster.Allocate(ctx, Share("100Gi", 10)); result != nil {
		t.Fatalf("a share over the remaining memory was allocated")
	}
	for _, c := range []*resourceapi.ResourceClaim{a, b} {
		h.release(cluster.Claims()[c.UID])
		cluster.Free(c.UID)
	}
	if result, _ := cluster.Allocate(ctx, MIG("1g.18gb", 1)); result == nil {
		t.Fatal("MIG not allocated once the shares were gone")
	}
}

// TestCheckerCatchesImpossibleAllocations is the negative control of the
// tests above: with the counters taken out of the slices, the allocator
// hands out overlapping partitions, and the hardware check must say so.
func TestCheckerCatchesImpossibleAllocations(t *testing.T) {
	ctx := context.Background()
	h, cluster := newHardware(t, "dgxh200", 1)
	for _, s := range cluster.Slices {
		s.Spec.SharedCounters = nil
		for i := range s.Spec.Devices {
			s.Spec.Devices[i].ConsumesCounters = nil
		}
	}
	var errs []error
	for _, claim := range []*resourceapi.ResourceClaim{MIGAt("4g.71gb", 0), MIGAt("3g.71gb", 0)} {
		result, err := cluster.Allocate(ctx, claim)
		if err != nil || result == nil {
			t.Fatalf("without counters the allocator should allocate %s: %v", claim.Name, err)
		}
		if err := h.check(claim, result); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) != 1 {
		t.Fatalf("overlapping 4g and 3g at slice 0: checker reported %v, want one refusal", errs)
	}
	t.Logf("refused as expected: %v", errs[0])
}
