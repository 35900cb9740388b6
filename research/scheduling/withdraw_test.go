package scheduling

import (
	"context"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/tessera-gpu/tessera/pkg/resourceslice"
)

// TestWithdrawnSlicesAllocateOnlyWhatExists runs random sequences of claims,
// prepares (in random order, some late, some never) and frees through the
// allocator while the node republishes its slices with blocked devices
// withdrawn after every prepare and unprepare. Every allocation must be
// creatable on the hardware, no allocated device may ever be missing from
// the slices, and a prepare or unprepare changes one slice per GPU the
// claim's devices are on (so the publication controller keeps the pool's
// generation for a claim on one GPU).
func TestWithdrawnSlicesAllocateOnlyWhatExists(t *testing.T) {
	sequences, steps := 10, 120
	if testing.Short() {
		sequences, steps = 3, 60
	}
	ctx := context.Background()
	allocated, refused, maxChurn, oneGPU := 0, 0, 0, 0
	for seq := range sequences {
		rng := rand.New(rand.NewPCG(uint64(seq), 13))
		h, cluster := newHardware(t, "dgxh200", 4)
		profiles := profileNames(h)
		prepared := map[types.UID]bool{}
		publish := func() int {
			devices := map[string]bool{}
			for uid := range prepared {
				for _, r := range cluster.Claims()[uid].Status.Allocation.Devices.Results {
					devices[r.Device] = true
				}
			}
			next := resourceslice.Objects("n1", resourceslice.Build("n1", h.node, resourceslice.Options{
				Pool: "default", Prepared: devices, WithdrawBlocked: true,
			}))
			churn := sliceChanges(cluster.Slices, next)
			cluster.Slices = next
			assertAllocatedPublished(t, cluster)
			return churn
		}
		// churn republishes after the claim's prepare or unprepare and
		// checks that only the slices of the claim's GPUs changed.
		churn := func(uid types.UID) {
			gpus := map[string]bool{}
			for _, r := range cluster.Claims()[uid].Status.Allocation.Devices.Results {
				gpus[strings.SplitN(r.Device, "-", 3)[1]] = true
			}
			changed := publish()
			if changed > len(gpus) {
				t.Errorf("(un)preparing claim %s on %d GPUs changed %d slices", cluster.Claims()[uid].Name, len(gpus), changed)
			}
			if len(gpus) == 1 {
				oneGPU++
				maxChurn = max(maxChurn, changed)
			}
		}
		publish()
		var live []types.UID
		for range steps {
			switch action := rng.IntN(10); {
			case action < 5:
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
			case action < 8 && len(live) > 0:
				uid := live[rng.IntN(len(live))]
				if !prepared[uid] {
					prepared[uid] = true
					churn(uid)
				}
			case len(live) > 0:
				i := rng.IntN(len(live))
				uid := live[i]
				claim := cluster.Claims()[uid]
				if prepared[uid] {
					delete(prepared, uid)
					churn(uid)
				}
				h.release(claim)
				cluster.Free(uid)
				live = append(live[:i], live[i+1:]...)
			}
		}
	}
	t.Logf("%d claims allocated and created, %d refused; %d (un)prepares of claims on one GPU changed at most %d slice",
		allocated, refused, oneGPU, maxChurn)
	if oneGPU == 0 {
		t.Error("no claim on one GPU was prepared")
	}
	if allocated == 0 || refused == 0 {
		t.Errorf("sequences too easy or too hard: %d allocated, %d refused", allocated, refused)
	}
}

// assertAllocatedPublished: the allocator counts counters only from devices
// it finds published, so an allocated device must never be withdrawn.
func assertAllocatedPublished(t *testing.T, c *Cluster) {
	t.Helper()
	published := map[string]bool{}
	for _, s := range c.Slices {
		for _, d := range s.Spec.Devices {
			published[d.Name] = true
		}
	}
	for _, claim := range c.Claims() {
		for _, r := range claim.Status.Allocation.Devices.Results {
			if !published[r.Device] {
				t.Fatalf("allocated device %s of claim %s was withdrawn", r.Device, claim.Name)
			}
		}
	}
}

// sliceChanges counts the slices a publication controller would update to go
// from old to next (by name; a slice only in one of them counts once).
func sliceChanges(old, next []*resourceapi.ResourceSlice) int {
	byName := map[string]*resourceapi.ResourceSlice{}
	for _, s := range old {
		byName[s.Name] = s
	}
	changed := 0
	for _, s := range next {
		o, ok := byName[s.Name]
		delete(byName, s.Name)
		if !ok || !reflect.DeepEqual(o.Spec.Devices, s.Spec.Devices) || !reflect.DeepEqual(o.Spec.SharedCounters, s.Spec.SharedCounters) {
			changed++
		}
	}
	return changed + len(byName)
}

// TestPerGPUSlicesAllocateAsPacked: the layout withdrawal uses (each GPU's
// devices in slices of their own) makes the allocator choose exactly the
// devices the packed, profile-major layout makes it choose, claim after
// claim, because among the devices any one request can select the order is
// the same.
func TestPerGPUSlicesAllocateAsPacked(t *testing.T) {
	sequences, steps := 6, 80
	if testing.Short() {
		sequences, steps = 2, 40
	}
	ctx := context.Background()
	compared := 0
	for seq := range sequences {
		rng := rand.New(rand.NewPCG(uint64(seq), 1313))
		h, packed := newHardware(t, "dgxh200", 8)
		perGPU := NewCluster([]string{"n1"}, resourceslice.Objects("n1", resourceslice.Build("n1", h.node, resourceslice.Options{
			Pool: "default", WithdrawBlocked: true,
		})))
		profiles := profileNames(h)
		var live []types.UID
		for range steps {
			if rng.IntN(4) == 0 && len(live) > 0 {
				i := rng.IntN(len(live))
				packed.Free(live[i])
				perGPU.Free(live[i])
				live = append(live[:i], live[i+1:]...)
				continue
			}
			claim := randomClaim(rng, profiles)
			want, err := packed.Allocate(ctx, claim)
			if err != nil {
				t.Fatal(err)
			}
			got, err := perGPU.Allocate(ctx, claim)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(chosen(want), chosen(got)); diff != "" {
				t.Fatalf("sequence %d, claim %s: devices chosen (-packed +per-GPU):\n%s", seq, claim.Name, diff)
			}
			if want != nil {
				live = append(live, claim.UID)
				compared++
			}
		}
	}
	t.Logf("%d allocations identical", compared)
}

// chosen lists an allocation's request and device names (share IDs are
// random).
func chosen(a *resourceapi.AllocationResult) []string {
	if a == nil {
		return nil
	}
	var out []string
	for _, r := range a.Devices.Results {
		out = append(out, r.Request+"="+r.Device)
	}
	return out
}
