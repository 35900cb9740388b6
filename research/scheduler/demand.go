package scheduler

import (
	"maps"
	"math"
	"sync"
	"sync/atomic"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
)

// demandHalfLife is how many devices asked for halve the weight of those
// asked for before them in Demand's estimate: long enough that the weights
// stay put while the mix stays put (each class of a mix of seven is then
// counted from about 200 recent requests), short enough that a cluster whose
// users start asking for whole GPUs has them weighed within a few thousand
// requests.
const demandHalfLife = 1000

// demandExponent bends a class's share of the demand, relative to the class
// most asked for, into its weight. It was chosen on the packing benchmark's
// five other request mixes, not on its own uniform one (docs/benchmarks.md,
// Packing): 0.75 gained 0.86 points on them on average, weights in proportion
// to the demand (1) 0.73, their square root (0.5) 0.70.
const demandExponent = 0.75

// demandStep is the grain of the published weights, and how far a class's
// estimate moves from its published weight before the weights are published
// again: the placement memo and the nodes' caches keep what they worked out
// with one version of the weights, so a new version must mean a real change
// in the mix, not the noise of the last few requests.
const demandStep = 1.0 / 16

// maxDemandClasses bounds the classes Demand counts: a cluster's GPU models
// have a few dozen MIG profiles between them at most.
const maxDemandClasses = 64

// demandForgotten is the count below which a class is forgotten (a request
// some ten half-lives ago).
const demandForgotten = 1e-3

// Demand estimates which classes of Tessera's devices (a MIG profile, the
// whole GPU, the time-shared GPU: partition.Choice's classes) the cluster's
// claims ask for, from the requests the scheduler sees, so that the
// placement choice charges for blocking a class by the demand for it
// (partition.Left.BestFitWeighted). Each device asked for counts once,
// decayed by demandHalfLife. A class's weight is ((its count + 1) / (the
// largest count + 1)) to the power demandExponent, rounded to demandStep: 1
// for the class most asked for, 0 for one nobody asks for, and 1 for every
// class before anything was asked, which is BestFit's measure. Safe for
// concurrent use.
type Demand struct {
	mu     sync.Mutex
	counts map[string]float64
	decay  float64
	// published is what Weights returns; replaced, never changed.
	published atomic.Pointer[DemandWeights]
}

// DemandWeights is one published version of Demand's weights. Read-only.
type DemandWeights struct {
	// Version is 0 for the weights before anything was asked for (every
	// class 1), and grows with each version published.
	Version uint64
	byClass map[string]float64
	// other is the weight of a class not asked for yet.
	other float64
	// share is each class's share of the counts when the weights were
	// published; nil before anything was asked for.
	share map[string]float64
}

// NewDemand returns an estimate that has seen nothing.
func NewDemand() *Demand {
	d := &Demand{counts: map[string]float64{}, decay: math.Exp2(-1.0 / demandHalfLife)}
	d.published.Store(&DemandWeights{other: 1})
	return d
}

// Observe counts n devices of the class asked for. A class longer than a
// device attribute's value may be (64 bytes) matches no device, since a MIG
// profile is such a value, so it is not counted: what a selector says is the
// user's to write, and the classes are the labels of the demand's metrics.
func (d *Demand) Observe(class string, n int) {
	if d == nil || n <= 0 || class == "" || len(class) > resourceapi.DeviceAttributeMaxValueLength {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	// n requests one after the other, in closed form: a claim's count is
	// the user's to write, and a loop over it would be theirs to make long.
	fade := math.Pow(d.decay, float64(n))
	for c, v := range d.counts {
		if v *= fade; v < demandForgotten {
			delete(d.counts, c)
			continue
		}
		d.counts[c] = v
	}
	if _, ok := d.counts[class]; !ok && len(d.counts) >= maxDemandClasses {
		// A class is a profile name from the claim's selector, which the
		// user writes: make room by forgetting the class least asked for.
		least := ""
		for c, v := range d.counts {
			if least == "" || v < d.counts[least] {
				least = c
			}
		}
		delete(d.counts, least)
	}
	d.counts[class] += (1 - fade) / (1 - d.decay)
	most := 0.0
	for _, v := range d.counts {
		most = max(most, v)
	}
	weight := func(count float64) float64 { return math.Pow((count+1)/(most+1), demandExponent) }
	old := d.published.Load()
	moved := math.Abs(weight(0)-old.other) > demandStep
	for c, v := range d.counts {
		if math.Abs(weight(v)-old.Weight(c)) > demandStep {
			moved = true
		}
	}
	for c, v := range old.byClass {
		if _, ok := d.counts[c]; !ok && math.Abs(weight(0)-v) > demandStep {
			moved = true
		}
	}
	if !moved {
		return
	}
	next := &DemandWeights{Version: old.Version + 1, byClass: make(map[string]float64, len(d.counts)), other: quantize(weight(0)), share: make(map[string]float64, len(d.counts))}
	sum := 0.0
	for _, v := range d.counts {
		sum += v
	}
	for c, v := range d.counts {
		next.byClass[c] = quantize(weight(v))
		next.share[c] = v / sum
	}
	d.published.Store(next)
}

// Weights returns the weights published last; nil d gives every class 1.
func (d *Demand) Weights() *DemandWeights {
	if d == nil {
		return &DemandWeights{other: 1}
	}
	return d.published.Load()
}

// Weight is the class's weight.
func (w *DemandWeights) Weight(class string) float64 {
	if v, ok := w.byClass[class]; ok {
		return v
	}
	return w.other
}

// Share is the class's share of the demand when the weights were published:
// the chance that the next device asked for is of the class, which
// partition.Left.Rollout draws its futures from. Before anything was asked
// for, every class is alike (1, unnormalised).
func (w *DemandWeights) Share(class string) float64 {
	if w.share == nil {
		return 1
	}
	return w.share[class]
}

// Classes returns a copy of the weights of the classes asked for.
func (w *DemandWeights) Classes() map[string]float64 { return maps.Clone(w.byClass) }

// quantize rounds a weight to demandStep.
func quantize(w float64) float64 { return math.Round(w/demandStep) * demandStep }

// maxSeenPods bounds the pods one generation of seenPods remembers: enough
// for the pods pending at once in a large cluster; a pod forgotten and seen
// again is counted again, which only weighs its class a little more.
const maxSeenPods = 1 << 14

// seenPods remembers the pods the demand has counted, in two generations
// bounded by count as placeMemo keeps its placements.
type seenPods struct {
	mu            sync.Mutex
	current, prev map[types.UID]bool
}

// first reports whether uid was not seen before, and remembers it.
func (s *seenPods) first(uid types.UID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.current[uid] || s.prev[uid] {
		return false
	}
	if s.current == nil || len(s.current) >= maxSeenPods {
		s.prev, s.current = s.current, make(map[types.UID]bool)
	}
	s.current[uid] = true
	return true
}

// forget lets uid be counted when it is seen again.
func (s *seenPods) forget(uid types.UID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.current, uid)
	delete(s.prev, uid)
}

// demandItem is a class of Tessera's devices and how many of it one request
// asks for.
type demandItem struct {
	class string
	n     int
}

// podDemand is what the pod's claims ask of Tessera's devices, request by
// request, for Demand: whole GPUs and shares by their count, MIG partitions
// by the profile a selector names (device.attributes["gpu.tessera.dev"].profile
// == "…") whatever other selectors narrow them to (a GPU, a placement, a
// model), since what such a request takes is a partition of that profile all
// the same. A request of another driver's class, of every matching device
// (allocation mode All), or of a partition whose profile no selector names,
// or two name differently, tells nothing of the demand. A firstAvailable
// request counts as its first choice. It is podRequest's reading, less
// strict: Score models only the requests it can place exactly, while the
// demand counts every device asked for that it can name.
func podDemand(pod *corev1.Pod, dra DRAState) ([]demandItem, error) {
	claims, err := podClaims(pod, dra)
	if err != nil {
		return nil, err
	}
	var out []demandItem
	for _, claim := range claims {
		for _, req := range claim.Spec.Devices.Requests {
			ask := firstChoice(req)
			if ask.mode == resourceapi.DeviceAllocationModeAll {
				continue
			}
			n := int(max(ask.count, 1))
			switch ask.class {
			case gpuapi.ClassGPU:
				out = append(out, demandItem{gpuapi.TypeGPU, n})
			case gpuapi.ClassShared:
				out = append(out, demandItem{gpuapi.TypeShared, n})
			case gpuapi.ClassMIG:
				if profile := namedProfile(ask.selectors); profile != "" {
					out = append(out, demandItem{profile, n})
				}
			}
		}
	}
	return out, nil
}

// namedProfile is the one MIG profile the selectors name in the form
// selectedProfile reads, "" when none does or two name different ones.
func namedProfile(selectors []resourceapi.DeviceSelector) string {
	profile := ""
	for _, s := range selectors {
		if s.CEL == nil {
			continue
		}
		m := profileSelector.FindStringSubmatch(s.CEL.Expression)
		switch {
		case m == nil:
		case profile != "" && profile != m[1]:
			return ""
		default:
			profile = m[1]
		}
	}
	return profile
}
