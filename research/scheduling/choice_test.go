//go:build patched_allocator

package scheduling

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"
	draapi "k8s.io/dynamic-resource-allocation/api"
	"k8s.io/dynamic-resource-allocation/structured"

	"github.com/tessera-gpu/tessera/research/scheduler"
)

// The tests of tessera-scheduler's MIG placement choice run on the allocator
// it is built on (make test-allocator-patched: research/patches/allocator/overlay.sh, with
// the build tag that placement-choice.patch's hook needs).

func withPlacementChoice(t *testing.T) {
	t.Helper()
	draapi.SetDeviceOrder(scheduler.MIGPlacementOrder)
	t.Cleanup(func() { draapi.SetDeviceOrder(nil) })
}

// TestPlacementChoiceMatchesBestFit checks the packing benchmark's replay of
// tessera-scheduler's choice (BestFit) against the patched allocator with the
// choice registered, request by request: unweighted (MIGPlacementOrder), and
// weighed by a demand (MIGPlacementOrderFor and NewWeightedBestFit with one
// demand, which has seen 4g and 1g+me partitions only and is told of each
// request before the allocator runs, as tessera-scheduler's PreFilter does).
func TestPlacementChoiceMatchesBestFit(t *testing.T) {
	for _, weighted := range []bool{false, true} {
		t.Run(fmt.Sprintf("weighted=%t", weighted), func(t *testing.T) {
			var demand *scheduler.Demand
			if weighted {
				demand = scheduler.NewDemand()
				for i := range 3000 {
					demand.Observe([]string{"4g.71gb", "1g.18gb+me"}[i%2], 1)
				}
				draapi.SetDeviceOrder(scheduler.MIGPlacementOrderFor(demand))
				t.Cleanup(func() { draapi.SetDeviceOrder(nil) })
			} else {
				withPlacementChoice(t)
			}
			ctx := context.Background()
			differ, moved := 0, 0
			for seq := range 20 {
				rng := rand.New(rand.NewPCG(uint64(seq), 7))
				h, cluster := newHardware(t, "dgxh200", 8)
				gpus := builtNode(h.node.GPUs)
				bf, ff, unweighted := NewWeightedBestFit(gpus, demand), NewFirstFit(gpus), NewBestFit(gpus)
				profiles := profileNames(h)
				for step := range 64 {
					name := profiles[rng.IntN(len(profiles))]
					want := bf.Place(name)
					if ff.Place(name) != want {
						differ++
					}
					if unweighted.Place(name) != want {
						moved++
					}
					got := allocateOne(ctx, t, cluster, name)
					if got != want {
						t.Fatalf("sequence %d step %d, %s: allocator chose %q, BestFit %q", seq, step, name, got, want)
					}
					if got == "" {
						break
					}
				}
			}
			// First fit in the same states would have chosen otherwise this
			// often: the choice is in effect, not a replay of the published
			// order; and with weights, the unweighted choice.
			if differ == 0 {
				t.Errorf("the choice never differed from first fit")
			}
			if weighted && moved == 0 {
				t.Errorf("the weighted choice never differed from the unweighted one")
			}
			t.Logf("%d choices differ from first fit, %d from the unweighted choice (its node followed its own choices)", differ, moved)
		})
	}
}

// TestFinalChoiceMatchesRollout checks the packing benchmark's replay of
// tessera-scheduler's final choice (NewRolloutChoice) against the patched
// allocator with both orders registered, as tessera-scheduler registers them,
// request by request: an allocation marked final (draapi.WithFinalChoice, as
// the patched DynamicResources plugin's Reserve marks it) takes the replay's
// partition, and one not marked takes the weighted BestFit choice in the same
// state. The demand has seen the uniform mix of the benchmark, and is told of
// each request before the allocator runs.
func TestFinalChoiceMatchesRollout(t *testing.T) {
	demand := scheduler.NewDemand()
	profiles := []string{"1g.18gb", "2g.35gb", "3g.71gb", "4g.71gb", "7g.141gb", "1g.18gb+me", "1g.35gb"}
	for i := range 3000 {
		demand.Observe(profiles[i%len(profiles)], 1)
	}
	draapi.SetDeviceOrder(scheduler.MIGPlacementOrderFor(demand))
	draapi.SetFinalDeviceOrder(scheduler.MIGFinalPlacementOrderFor(demand))
	t.Cleanup(func() {
		draapi.SetDeviceOrder(nil)
		draapi.SetFinalDeviceOrder(nil)
	})
	ctx := context.Background()
	placed, differ := 0, 0
	for seq := range 3 {
		rng := rand.New(rand.NewPCG(uint64(seq), 7))
		h, cluster := newHardware(t, "dgxh200", 8)
		replay := NewRolloutChoice(builtNode(h.node.GPUs), demand, scheduler.FinalFutures)
		for step := range 64 {
			name := profiles[rng.IntN(len(profiles))]
			demand.Observe(name, 1)
			cheap, fits := replay.choose(name, 0)
			want := ""
			if fits {
				c, _ := replay.choose(name, scheduler.FinalFutures)
				want = replay.take(c)
				if c != cheap {
					differ++
				}
			}
			// Not marked final: the weighted BestFit choice, as in Filter.
			if got := filterOne(ctx, t, cluster, name); fits && got != replay.names[cheap] {
				t.Fatalf("sequence %d step %d, %s: allocator's choice %q, BestFit %q", seq, step, name, got, replay.names[cheap])
			}
			got := allocateOne(draapi.WithFinalChoice(ctx), t, cluster, name)
			if got != want {
				t.Fatalf("sequence %d step %d, %s: allocator's final choice %q, replay %q", seq, step, name, got, want)
			}
			if got == "" {
				break
			}
			placed++
		}
	}
	// The final choice is in effect: it differs from the cheap one.
	if differ == 0 {
		t.Errorf("the final choice never differed from weighted BestFit in %d placements", placed)
	}
	t.Logf("%d partitions placed, %d of them where the final choice differs from weighted BestFit", placed, differ)
}

// filterOne is the partition of the profile an allocation not marked final
// takes on the cluster's first node, as Filter's allocation, which is not
// kept; "" when none fits.
func filterOne(ctx context.Context, t *testing.T, c *Cluster, profile string) string {
	t.Helper()
	alloc, err := structured.NewAllocator(ctx, Features, c.state, allocatorClasses, c.Slices, c.cel)
	if err != nil {
		t.Fatal(err)
	}
	results, err := alloc.Allocate(ctx, c.Nodes[0], []*resourceapi.ResourceClaim{MIG(profile, 1)})
	if err != nil {
		t.Fatal(err)
	}
	if len(results) != 1 {
		return ""
	}
	return results[0].Devices.Results[0].Device
}

// TestPlacementChoiceDiffersFromFirstFit: GPU 0 is empty and GPU 1 half cut;
// kube-scheduler's first fit cuts GPU 0 for a 1g partition, tessera-scheduler
// fills GPU 1.
func TestPlacementChoiceDiffersFromFirstFit(t *testing.T) {
	ctx := context.Background()
	_, cluster := newHardware(t, "dgxh200", 2)
	seven, err := cluster.Allocate(ctx, MIG("7g.141gb", 1))
	if err != nil || seven == nil {
		t.Fatalf("7g: %v, %v", seven, err)
	}
	if r, err := cluster.Allocate(ctx, MIGAt("3g.71gb", 4)); err != nil || r == nil || r.Devices.Results[0].Device != "gpu-1-mig-3g71gb-4" {
		t.Fatalf("3g at 4: %v, %v", r, err)
	}
	for uid := range cluster.Claims() {
		if cluster.Claims()[uid].Status.Allocation.Devices.Results[0].Device == "gpu-0-mig-7g141gb-0" {
			cluster.Free(uid)
		}
	}
	for _, tc := range []struct {
		name   string
		choice bool
		want   string
	}{
		{"first fit", false, "gpu-0-mig-1g18gb-6"},
		{"choice", true, "gpu-1-mig-1g18gb-3"},
	} {
		if tc.choice {
			withPlacementChoice(t)
		}
		claim := MIG("1g.18gb", 1)
		r, err := cluster.Allocate(ctx, claim)
		if err != nil || r == nil {
			t.Fatalf("%s: %v, %v", tc.name, r, err)
		}
		if got := r.Devices.Results[0].Device; got != tc.want {
			t.Errorf("%s: took %s, want %s", tc.name, got, tc.want)
		}
		cluster.Free(claim.UID)
	}
}

// TestPlacementChoiceNeverTakesWhatDoesNotFit: random claims of every kind
// (whole GPUs, MIG partitions one to three at a time, shares, firstAvailable)
// come and go on a node with the choice registered. Every allocation is
// creatable on the mock hardware (nothing overlaps what is allocated), and
// the choice never refuses a claim that first fit places in the same state.
func TestPlacementChoiceNeverTakesWhatDoesNotFit(t *testing.T) {
	ctx := context.Background()
	allocated, refused := 0, 0
	for seq := range 6 {
		rng := rand.New(rand.NewPCG(uint64(seq), 99))
		h, cluster := newHardware(t, "dgxh200", 4)
		profiles := profileNames(h)
		var live []types.UID
		for step := range 80 {
			if len(live) > 0 && rng.IntN(4) == 0 {
				i := rng.IntN(len(live))
				claim := cluster.Claims()[live[i]]
				h.release(claim)
				cluster.Free(claim.UID)
				live = append(live[:i], live[i+1:]...)
				continue
			}
			claim := randomClaim(rng, profiles)
			draapi.SetDeviceOrder(nil)
			firstFit, err := cluster.Filter(ctx, claim)
			if err != nil {
				t.Fatal(err)
			}
			draapi.SetDeviceOrder(scheduler.MIGPlacementOrder)
			result, err := cluster.Allocate(ctx, claim)
			draapi.SetDeviceOrder(nil)
			if err != nil {
				t.Fatal(err)
			}
			if result == nil {
				if firstFit > 0 {
					t.Fatalf("sequence %d step %d: the choice refused %s, which first fit places", seq, step, claim.Name)
				}
				refused++
				continue
			}
			h.apply(claim, result)
			allocated++
			live = append(live, claim.UID)
		}
	}
	t.Logf("%d claims allocated and created, %d refused", allocated, refused)
	if allocated == 0 || refused == 0 {
		t.Errorf("sequences too easy or too hard: %d allocated, %d refused", allocated, refused)
	}
}

// BenchmarkPlacementChoiceCost is what the choice costs tessera-scheduler's
// filter: BenchmarkSchedulerCost's claims on 100 nodes, as published and
// withdrawn, at 0 and 90 % fill, on the patched allocator without an order
// registered and with the choice, one right after the other.
//
//	make test-allocator-patched's go test, with -run '^$' -bench PlacementChoiceCost -benchtime 2x
func BenchmarkPlacementChoiceCost(b *testing.B) {
	inv := benchInventory(b)
	for _, fill := range []int{0, 90} {
		for _, l := range []Layout{Tessera, withdrawn(Tessera, inv, Fill(fill))} {
			for _, kind := range []ClaimKind{KindWhole, KindMIG1g, KindMIG3g} {
				for _, choice := range []bool{false, true} {
					if choice {
						draapi.SetDeviceOrder(scheduler.MIGPlacementOrder)
					}
					benchmarkClaim(b, fmt.Sprintf("fill=%d/claim=%s/layout=%s/choice=%t", fill, kind, l.Name, choice), l, inv, fill, 100, kind)
					draapi.SetDeviceOrder(nil)
				}
			}
		}
	}
}
