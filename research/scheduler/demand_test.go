package scheduler

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/dynamic-resource-allocation/structured"

	fwk "k8s.io/kube-scheduler/framework"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
)

// TestDemandStartsAsBestFit: before anything is asked for, and without a
// demand, every class weighs 1 at version 0, which is BestFit's measure
// (MIGPlacementOrderFor then ranks as MIGPlacementOrder does, and the plugin
// models the unweighted choice).
func TestDemandStartsAsBestFit(t *testing.T) {
	for name, d := range map[string]*Demand{"new": NewDemand(), "nil": nil} {
		w := d.Weights()
		if w.Version != 0 {
			t.Errorf("%s: version %d, want 0", name, w.Version)
		}
		for _, class := range []string{"1g.18gb", gpuapi.TypeGPU, gpuapi.TypeShared} {
			if got := w.Weight(class); got != 1 {
				t.Errorf("%s: %s weighs %v, want 1", name, class, got)
			}
		}
	}
	var d *Demand
	d.Observe("1g.18gb", 1) // nil: no panic, nothing learned
	NewDemand().Observe("", 3)
}

// threeOneTwo is a demand told 4,000 requests, in cycles of four: three 1g
// partitions, one 3g partition, and one whole-GPU request of two.
func threeOneTwo() *Demand {
	d := NewDemand()
	for i := range 4000 {
		switch i % 4 {
		case 3:
			d.Observe("3g.71gb", 1)
		case 1:
			d.Observe(gpuapi.TypeGPU, 2)
			fallthrough
		default:
			d.Observe("1g.18gb", 1)
		}
	}
	return d
}

// TestDemandFollowsTheMix: the class asked for most weighs 1, the others
// ((their count + 1) / (its count + 1)) ** demandExponent rounded to
// demandStep, a class never asked for 0; when the mix changes, the
// weights follow it within a few half-lives.
func TestDemandFollowsTheMix(t *testing.T) {
	d := threeOneTwo()
	// Per cycle of 4: 3 1g, 1 3g, 2 whole: 1g most.
	want := map[string]float64{
		"1g.18gb":          1,
		"3g.71gb":          quantize(math.Pow(1.0/3, demandExponent)),
		gpuapi.TypeGPU:     quantize(math.Pow(2.0/3, demandExponent)),
		gpuapi.TypeShared:  0,
		"never-asked-gpu7": 0,
	}
	w := d.Weights()
	for class, v := range want {
		if got := w.Weight(class); math.Abs(got-v) > demandStep+1e-9 {
			t.Errorf("%s weighs %v, want %v (within a step)", class, got, v)
		}
	}
	for class, got := range w.Classes() {
		if got < 0 || got > 1 || math.Abs(got/demandStep-math.Round(got/demandStep)) > 1e-9 {
			t.Errorf("%s weighs %v: not a multiple of %v in [0, 1]", class, got, demandStep)
		}
	}
	// The cluster turns to whole GPUs only.
	for range 4 * demandHalfLife {
		d.Observe(gpuapi.TypeGPU, 1)
	}
	w = d.Weights()
	if w.Weight(gpuapi.TypeGPU) != 1 || w.Weight("1g.18gb") > 0.25 || w.Weight("3g.71gb") > 0.25 {
		t.Errorf("after %d whole GPUs: gpu %v, 1g %v, 3g %v; want 1 and at most 0.25", 4*demandHalfLife, w.Weight(gpuapi.TypeGPU), w.Weight("1g.18gb"), w.Weight("3g.71gb"))
	}
}

// TestDemandPublishesRealChangesOnly: while a random mix stays the same, the
// weights are published again only now and then (the memo and the caches
// keep what they worked out with one version), never more than once in 50
// requests, and each version stays within two steps of the mix's weights.
func TestDemandPublishesRealChangesOnly(t *testing.T) {
	profiles := h200Profiles
	d := NewDemand()
	rng := rand.New(rand.NewPCG(1, 2))
	for range 3 * demandHalfLife {
		d.Observe(profiles[rng.IntN(len(profiles))], 1)
	}
	first := d.Weights().Version
	const n = 20000
	for range n {
		d.Observe(profiles[rng.IntN(len(profiles))], 1)
		for _, p := range profiles {
			if w := d.Weights().Weight(p); w < 1-2*demandStep {
				t.Fatalf("%s weighs %v in a uniform mix", p, w)
			}
		}
	}
	versions := d.Weights().Version - first
	t.Logf("%d versions in %d requests of one mix", versions, n)
	if versions > n/50 {
		t.Errorf("%d versions published in %d requests of one mix, want at most %d", versions, n, n/50)
	}
}

// TestDemandConcurrent: Observe and Weights from several goroutines (run
// with -race).
func TestDemandConcurrent(t *testing.T) {
	d := NewDemand()
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 500 {
				d.Observe([]string{"1g.18gb", "3g.71gb", gpuapi.TypeGPU}[(g+i)%3], 1)
				_ = d.Weights().Weight("1g.18gb")
			}
		})
	}
	wg.Wait()
	if d.Weights().Version == 0 {
		t.Error("nothing published")
	}
}

// TestPreFilterTellsTheDemand: with WithDemand, PreFilter counts what each
// pod asks for once, however often the pod is tried, request by request: a
// MIG request's profile and count, also when other selectors narrow it to a
// GPU; a whole-GPU or share request's count; a firstAvailable request's first
// choice. A pod whose claim is not there yet is counted when it is; a request
// whose profile the plugin cannot read (none, or two), of every device, or
// of another driver is not counted. It never rejects a pod. Without
// WithDemand it counts nothing.
func TestPreFilterTellsTheDemand(t *testing.T) {
	dra := &fakeDRA{claims: map[string]*resourceapi.ResourceClaim{
		"ns/mig":    migClaim("mig", 2, profileIs("1g.18gb")),
		"ns/any":    migClaim("any", 1),
		"ns/whole":  classClaim("whole", gpuapi.ClassGPU, 3),
		"ns/share":  shareClaim("share", 30),
		"ns/other":  classClaim("other", "other.example.com", 1),
		"ns/unread": migClaim("unread", 1, `device.attributes["gpu.tessera.dev"].profile != "1g.18gb"`),
		// Narrowed to one GPU, still a 2g.35gb partition.
		"ns/pinned":   migClaim("pinned", 1, profileIs("2g.35gb"), `device.attributes["gpu.tessera.dev"].index == 1`),
		"ns/conflict": migClaim("conflict", 1, profileIs("1g.18gb"), profileIs("3g.71gb")),
		"ns/all":      allClaim("all", gpuapi.ClassGPU),
		"ns/two":      twoRequests("two"),
	}}
	d := NewDemand()
	p, err := NewWithState(Args{}, dra, WithPlacementChoice(), WithDemand(d))
	if err != nil {
		t.Fatal(err)
	}
	preFilter := func(claim string) {
		t.Helper()
		pod := podWithClaim(claim)
		pod.UID = types.UID("uid-" + claim)
		if _, st := p.PreFilter(context.Background(), &fakeCycleState{data: map[fwk.StateKey]fwk.StateData{}}, pod, nil); st.Code() != fwk.Skip {
			t.Fatalf("PreFilter of %s: %v, want Skip", claim, st)
		}
	}
	for range 3 {
		for _, c := range []string{"mig", "any", "whole", "share", "other", "unread", "pinned", "conflict", "all", "two", "late", ""} {
			preFilter(c)
		}
	}
	dra.claims["ns/late"] = migClaim("late", 1, profileIs("3g.71gb"))
	preFilter("late")
	preFilter("late")
	got := map[string]float64{}
	for class, v := range d.counts {
		got[class] = math.Round(v)
	}
	// two: a 4g.71gb partition and, first available, a share.
	want := map[string]float64{"1g.18gb": 2, gpuapi.TypeGPU: 3, gpuapi.TypeShared: 2, "3g.71gb": 1, "2g.35gb": 1, "4g.71gb": 1}
	if len(got) != len(want) {
		t.Errorf("counted %v, want %v", got, want)
	}
	for class, v := range want {
		if got[class] != v {
			t.Errorf("counted %v of %s, want %v (all: %v)", got[class], class, v, got)
		}
	}

	plain, err := NewWithState(Args{}, dra, WithPlacementChoice())
	if err != nil {
		t.Fatal(err)
	}
	if _, st := plain.PreFilter(context.Background(), nil, &corev1.Pod{}, nil); st.Code() != fwk.Skip {
		t.Errorf("PreFilter without a demand: %v, want Skip", st)
	}
}

// allClaim asks for every device of the class.
func allClaim(name, class string) *resourceapi.ResourceClaim {
	c := classClaim(name, class, 0)
	c.Spec.Devices.Requests[0].Exactly.AllocationMode = resourceapi.DeviceAllocationModeAll
	return c
}

// twoRequests asks for a 4g.71gb partition and, first available, a share or
// a whole GPU.
func twoRequests(name string) *resourceapi.ResourceClaim {
	c := migClaim(name, 1, profileIs("4g.71gb"))
	c.Spec.Devices.Requests = append(c.Spec.Devices.Requests, resourceapi.DeviceRequest{
		Name: "then",
		FirstAvailable: []resourceapi.DeviceSubRequest{
			{Name: "share", DeviceClassName: gpuapi.ClassShared, Count: 1},
			{Name: "whole", DeviceClassName: gpuapi.ClassGPU, Count: 1},
		},
	})
	return c
}

// TestSeenPodsIsBounded: seenPods forgets the oldest generation once two are
// full, so a pod seen long ago counts again, and forget lets a pod count
// again at once.
func TestSeenPodsIsBounded(t *testing.T) {
	var s seenPods
	if !s.first("a") || s.first("a") {
		t.Fatal("a pod is first once")
	}
	s.forget("a")
	if !s.first("a") {
		t.Fatal("a forgotten pod is first again")
	}
	for i := range 2 * maxSeenPods {
		s.first(types.UID(rune(i)) + "x")
	}
	if !s.first("a") {
		t.Error("a pod two generations old is still remembered")
	}
	if len(s.current)+len(s.prev) > 2*maxSeenPods {
		t.Errorf("remembers %d pods, at most %d", len(s.current)+len(s.prev), 2*maxSeenPods)
	}
}

// TestScoreFollowsNewWeights: one plugin scores a pod, the demand publishes
// new weights, and the plugin scores the same pod on the same node in the
// same state again: the second score is the one the new weights give, on
// states where they move the partition, with the fragmentation cache and
// the placement memo (which keep what they worked out with the old
// weights) and without them.
func TestScoreFollowsNewWeights(t *testing.T) {
	for name, opts := range map[string][]Option{
		"cache and memo": nil,
		"memo only":      {WithoutFragmentationCache()},
		"neither":        {WithoutFragmentationCache(), WithoutPlacementMemo()},
	} {
		t.Run(name, func(t *testing.T) {
			warmed := NewDemand()
			warm(warmed)
			cases := 0
			randomMIGStates(t, "h200", func(slices []*resourceapi.ResourceSlice, alloc *structured.AllocatedState, profile string) {
				if profile == "" || cases >= 10 || weightedChoiceTakes(t, warmed, slices, "n", alloc, profile) == choiceTakes(t, slices, "n", alloc, profile) {
					return
				}
				cases++
				d := NewDemand()
				dra := &fakeDRA{slices: slices, claims: map[string]*resourceapi.ResourceClaim{"ns/c": migClaim("c", 1, profileIs(profile))}, allocated: alloc}
				p, err := NewWithState(Args{}, dra, append([]Option{WithPlacementChoice(), WithDemand(d)}, opts...)...)
				if err != nil {
					t.Fatal(err)
				}
				nodes := nodeInfos("n")
				before, _ := scoreAll(t, p, "c", nodes)
				warm(d)
				after, _ := scoreAll(t, p, "c", nodes)
				fresh, err := NewWithState(Args{}, dra, WithPlacementChoice(), WithDemand(d))
				if err != nil {
					t.Fatal(err)
				}
				want, _ := scoreAll(t, fresh, "c", nodes)
				if after[0].Score != want[0].Score {
					t.Errorf("%s after new weights: raw score %d, a fresh plugin's %d (before them %d)", profile, after[0].Score, want[0].Score, before[0].Score)
				}
				if before[0].Score == want[0].Score {
					cases-- // the partition moved but the delta did not: tells nothing
				}
			})
			if cases == 0 {
				t.Error("no state where new weights change the score: the case tells nothing")
			}
		})
	}
}

// warm tells d of 3,000 requests, 4g and 1g+me partitions alike, nothing
// else: weights under which many partitions move to another GPU.
func warm(d *Demand) {
	for i := range 3000 {
		d.Observe([]string{"4g.71gb", "1g.18gb+me"}[i%2], 1)
	}
}

// TestDemandIsBounded: what a user writes in a claim cannot make the
// estimate slow or large: a count of 2^40 devices is one update (and that
// class then weighs 1, every other 0), and requests for thousands of
// made-up profiles keep at most 64 classes, the ones asked
// for most recently among them.
func TestDemandIsBounded(t *testing.T) {
	d := NewDemand()
	d.Observe("1g.18gb", 500)
	d.Observe(gpuapi.TypeGPU, 1<<40)
	if w := d.Weights(); w.Weight(gpuapi.TypeGPU) != 1 || w.Weight("1g.18gb") != 0 {
		t.Errorf("after 2^40 whole GPUs: gpu %v, 1g %v; want 1 and 0", w.Weight(gpuapi.TypeGPU), w.Weight("1g.18gb"))
	}
	for i := range 10000 {
		d.Observe(fmt.Sprintf("made-up-%d", i), 1)
	}
	if len(d.counts) > 64 {
		t.Errorf("%d classes counted, at most 64", len(d.counts))
	}
	if _, ok := d.counts["made-up-9999"]; !ok {
		t.Error("the class asked for last was forgotten")
	}
	if len(d.Weights().Classes()) > 64 {
		t.Errorf("%d classes published, at most 64", len(d.Weights().Classes()))
	}
	long := strings.Repeat("x", 65)
	d.Observe(long, 1<<20)
	if _, ok := d.counts[long]; ok {
		t.Error("a class of 65 bytes, longer than any device attribute's value, was counted")
	}
}

// TestDemandClosedFormIsOneByOne: n requests at once count as n requests
// one after the other.
func TestDemandClosedFormIsOneByOne(t *testing.T) {
	once, each := NewDemand(), NewDemand()
	for _, step := range []struct {
		class string
		n     int
	}{{"1g.18gb", 7}, {"3g.71gb", 300}, {gpuapi.TypeGPU, 2}, {"1g.18gb", 1500}} {
		once.Observe(step.class, step.n)
		for range step.n {
			each.Observe(step.class, 1)
		}
	}
	for c, v := range each.counts {
		if math.Abs(once.counts[c]-v) > 1e-6*v {
			t.Errorf("%s: counted %v at once, %v one by one", c, once.counts[c], v)
		}
	}
}
