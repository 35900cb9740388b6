package scheduling

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"sort"

	"github.com/tessera-gpu/tessera/pkg/inventory"
	"github.com/tessera-gpu/tessera/pkg/partition"
	"github.com/tessera-gpu/tessera/research/scheduler"
)

// FirstFit replays what the scheduler's allocator does for a claim of one MIG
// partition: it walks the published devices in order and takes the first of
// the requested profile whose counters are all available. TestFirstFitMatches
// Allocator checks it against the real allocator; it is a thousand times
// faster, which the packing benchmark needs.
type FirstFit struct {
	gpus      []partition.GPU
	remaining []map[string]int64
}

// NewFirstFit returns an empty node of the GPUs with each GPU's devices in
// the given order.
func NewFirstFit(gpus []partition.GPU) *FirstFit {
	f := &FirstFit{gpus: gpus, remaining: make([]map[string]int64, len(gpus))}
	for i, g := range gpus {
		f.remaining[i] = maps.Clone(g.Counters)
	}
	return f
}

// NewWeightedBestFit returns an empty node of the GPUs whose requests are
// placed as tessera-scheduler places them, with the demand d has learned,
// which each request is added to before it is placed.
func NewWeightedBestFit(gpus []partition.GPU, d *scheduler.Demand) *BestFit {
	b := NewBestFit(gpus)
	b.demand = d
	return b
}

// WarmDemand returns a demand told of n requests of the GPU's MIG profiles
// drawn from rng, each profile in proportion to mix (alike when mix is nil):
// what tessera-scheduler has learned after n requests of a cluster whose
// claims follow the mix.
func WarmDemand(rng *rand.Rand, profiles []inventory.MIGProfile, mix []float64, n int) *scheduler.Demand {
	d := scheduler.NewDemand()
	for range n {
		d.Observe(profiles[drawProfile(rng, len(profiles), mix)].Name, 1)
	}
	return d
}

// drawProfile is a profile index in proportion to mix, or uniform over n
// when mix is nil (one draw from rng either way).
func drawProfile(rng *rand.Rand, n int, mix []float64) int {
	if mix == nil {
		return rng.IntN(n)
	}
	total := 0.0
	for _, w := range mix {
		total += w
	}
	x := rng.Float64() * total
	for i, w := range mix {
		if x < w {
			return i
		}
		x -= w
	}
	return len(mix) - 1
}

// Place allocates one partition of the profile and returns its device name,
// or "" when none fits.
func (f *FirstFit) Place(profile string) string {
	for i, g := range f.gpus {
		for _, d := range g.Devices {
			if d.Kind != partition.KindMIG || d.Profile.Name != profile || !fits(f.remaining[i], d.Consumes) {
				continue
			}
			for c, n := range d.Consumes {
				f.remaining[i][c] -= n
			}
			return d.Name
		}
	}
	return ""
}

func fits(remaining, consumes map[string]int64) bool {
	return partition.Fits(remaining, consumes)
}

// BestFit replays tessera-scheduler's choice for a claim of one MIG
// partition: among the node's free placements of the requested profile it
// takes the one partition.BestFit ranks first; with a demand
// (NewWeightedBestFit), as tessera-scheduler does, the one BestFitWeighted
// ranks first with the demand's weights, the demand told of each request
// first (scheduler.MIGPlacementOrderFor and the plugin's PreFilter).
type BestFit struct {
	devices []partition.Choice
	names   []string
	left    map[string]map[string]int64
	// demand, when set, is told of each request before it is placed, and
	// its weights weigh the classes BestFit charges for blocking.
	demand *scheduler.Demand
	// futures, when above 0, makes the choice partition.Left.Rollout's
	// with that many futures drawn from the demand's shares
	// (NewRolloutChoice).
	futures int
}

// NewRolloutChoice returns an empty node of the GPUs whose requests are
// placed as tessera-scheduler's final choice places them
// (scheduler.MIGFinalPlacementOrderFor): the weighted BestFit order, then
// partition.Left.Rollout with the given number of futures drawn from the
// shares of the demand d has learned, which each request is added to before
// it is placed.
func NewRolloutChoice(gpus []partition.GPU, d *scheduler.Demand, futures int) *BestFit {
	b := NewWeightedBestFit(gpus, d)
	b.futures = futures
	return b
}

// NewBestFit returns an empty node of the GPUs.
func NewBestFit(gpus []partition.GPU) *BestFit {
	b := &BestFit{left: map[string]map[string]int64{}}
	for _, g := range gpus {
		b.left[g.CounterSet] = maps.Clone(g.Counters)
		for _, d := range g.Devices {
			class := string(d.Kind)
			if d.Kind == partition.KindMIG {
				class = d.Profile.Name
			}
			b.devices = append(b.devices, partition.Choice{CounterSet: g.CounterSet, Class: class, Consumes: d.Consumes})
			b.names = append(b.names, d.Name)
		}
	}
	return b
}

// Place allocates one partition of the profile and returns its device name,
// or "" when none fits.
func (b *BestFit) Place(profile string) string {
	// tessera-scheduler's PreFilter counts every pod, whether it fits or
	// not, before the allocator runs.
	b.demand.Observe(profile, 1)
	c, ok := b.choose(profile, b.futures)
	if !ok {
		return ""
	}
	return b.take(c)
}

// choose is the device the choice takes for a partition of the profile,
// with the rollout's futures when futures is above 0; ok is false when none
// fits.
func (b *BestFit) choose(profile string, futures int) (c int, ok bool) {
	var candidates []int
	for i, d := range b.devices {
		if d.Class == profile && fits(b.left[d.CounterSet], d.Consumes) {
			candidates = append(candidates, i)
		}
	}
	if len(candidates) == 0 {
		return 0, false
	}
	prepared := partition.Prepare(b.devices)
	var weights []float64
	if b.demand != nil {
		weights = prepared.Weigh(b.demand.Weights().Weight)
	}
	left := prepared.Left(b.left)
	ranked := left.BestFitWeighted(candidates, weights)
	if futures > 0 {
		ranked = left.Rollout(ranked, prepared.Weigh(b.demand.Weights().Share), futures, 0)
	}
	return ranked[0], true
}

// take allocates device c and returns its name.
func (b *BestFit) take(c int) string {
	d := b.devices[c]
	for name, n := range d.Consumes {
		b.left[d.CounterSet][name] -= n
	}
	return b.names[c]
}

// AscendingOrder republishes a GPU's MIG devices in plain ascending order of
// profile and placement start, the order a naive driver would use.
func AscendingOrder(g partition.GPU) partition.GPU {
	g.Devices = append([]partition.Device(nil), g.Devices...)
	sort.SliceStable(g.Devices, func(i, j int) bool {
		a, b := g.Devices[i], g.Devices[j]
		if a.Kind != partition.KindMIG || b.Kind != partition.KindMIG {
			return a.Kind != partition.KindMIG && b.Kind == partition.KindMIG
		}
		if a.Profile.ID != b.Profile.ID {
			return a.Profile.ID < b.Profile.ID
		}
		return a.Placement.Start < b.Placement.Start
	})
	return g
}

// Optimum answers, for a GPU model, whether a multiset of partitions can be
// placed on n GPUs at once, by exhaustive search over placements.
type Optimum struct {
	profiles []string
	// configs are the maximal per-GPU partitionings, as profile counts.
	configs [][]int
	// slices is each profile's memory slices, to prune by total size.
	slices []int
	perGPU int
	memo   map[uint64]bool
}

// NewOptimum enumerates every way to partition one GPU.
func NewOptimum(gpu inventory.GPU) *Optimum {
	g := partition.Build(gpu, partition.Options{})
	o := &Optimum{memo: map[uint64]bool{}}
	index := map[string]int{}
	for _, p := range gpu.MIG.Profiles {
		index[p.Name] = len(o.profiles)
		o.profiles = append(o.profiles, p.Name)
		o.slices = append(o.slices, p.Placements[0].Size)
	}
	o.perGPU = gpu.MIG.MemorySlices()
	var migs []partition.Device
	for _, d := range g.Devices {
		if d.Kind == partition.KindMIG {
			migs = append(migs, d)
		}
	}
	seen := map[string]bool{}
	var all [][]int
	counts := make([]int, len(o.profiles))
	remaining := maps.Clone(g.Counters)
	var walk func(from int)
	walk = func(from int) {
		key := fmt.Sprint(counts)
		if !seen[key] {
			seen[key] = true
			all = append(all, append([]int(nil), counts...))
		}
		for i := from; i < len(migs); i++ {
			d := migs[i]
			if !fits(remaining, d.Consumes) {
				continue
			}
			for c, n := range d.Consumes {
				remaining[c] -= n
			}
			counts[index[d.Profile.Name]]++
			walk(i + 1)
			counts[index[d.Profile.Name]]--
			for c, n := range d.Consumes {
				remaining[c] += n
			}
		}
	}
	walk(0)
	for _, c := range all {
		if !dominated(c, all) {
			o.configs = append(o.configs, c)
		}
	}
	return o
}

func dominated(c []int, all [][]int) bool {
	for _, other := range all {
		ge, gt := true, false
		for i := range c {
			ge = ge && other[i] >= c[i]
			gt = gt || other[i] > c[i]
		}
		if ge && gt {
			return true
		}
	}
	return false
}

// Feasible reports whether the partitions (profile counts in the order of
// the GPU's profiles) fit on gpus GPUs together.
func (o *Optimum) Feasible(need []int, gpus int) bool {
	size := 0
	key := uint64(gpus)
	for i, n := range need {
		n = max(n, 0)
		size += n * o.slices[i]
		key = key<<7 | uint64(min(n, 127))
	}
	if size == 0 {
		return true
	}
	if gpus == 0 || size > gpus*o.perGPU {
		return false
	}
	if v, ok := o.memo[key]; ok {
		return v
	}
	ok := false
	rest := make([]int, len(need))
	for _, c := range o.configs {
		for i := range need {
			rest[i] = max(need[i]-c[i], 0)
		}
		if o.Feasible(rest, gpus-1) {
			ok = true
			break
		}
	}
	o.memo[key] = ok
	return ok
}

type placer interface{ Place(profile string) string }

// PackingResult is the share of memory slices in use when the first MIG
// request of a sequence cannot be placed.
type PackingResult struct {
	Tessera, Ascending, BestFit, Best float64
	// Weighted is BestFit weighed by a demand (PackingWeighted), 0
	// without one.
	Weighted float64
}

// Add adds o's shares to r's, column by column, for a sum over sequences.
func (r *PackingResult) Add(o PackingResult) {
	r.Tessera += o.Tessera
	r.Ascending += o.Ascending
	r.BestFit += o.BestFit
	r.Best += o.Best
	r.Weighted += o.Weighted
}

// Packing draws a random sequence of MIG requests on an empty node of the
// GPUs and returns, for each policy, the share of memory slices in use when
// the first request cannot be placed.
func Packing(rng *rand.Rand, gpus []inventory.GPU, opt *Optimum) PackingResult {
	return PackingWeighted(rng, gpus, opt, nil)
}

// PackingWeighted is Packing with the Weighted column too when demand is
// set: tessera-scheduler's choice with what demand has learned, told of the
// sequence's requests as they come. The sequence is the same; the other
// columns do not read demand.
func PackingWeighted(rng *rand.Rand, gpus []inventory.GPU, opt *Optimum, demand *scheduler.Demand) PackingResult {
	var tessera, ascending []partition.GPU
	total := 0
	for _, gpu := range gpus {
		g := partition.Build(gpu, partition.Options{})
		tessera = append(tessera, g)
		ascending = append(ascending, AscendingOrder(g))
		total += gpu.MIG.MemorySlices()
	}
	profiles := gpus[0].MIG.Profiles
	size := func(name string) int {
		p, _ := gpus[0].MIG.ProfileByName(name)
		return p.Placements[0].Size
	}
	var res PackingResult
	ff := map[*float64]placer{&res.Tessera: NewFirstFit(tessera), &res.Ascending: NewFirstFit(ascending), &res.BestFit: NewBestFit(tessera)}
	used := map[*float64]int{}
	open := map[*float64]bool{&res.Tessera: true, &res.Ascending: true, &res.BestFit: true, &res.Best: true}
	if demand != nil {
		ff[&res.Weighted] = NewWeightedBestFit(tessera, demand)
		open[&res.Weighted] = true
	}
	need := make([]int, len(profiles))
	// A node cannot hold more partitions than it has memory slices.
	for step := 0; step < total && (open[&res.Tessera] || open[&res.Ascending] || open[&res.BestFit] || open[&res.Best] || open[&res.Weighted]); step++ {
		i := rng.IntN(len(profiles))
		name := profiles[i].Name
		for metric, f := range ff {
			if open[metric] {
				if f.Place(name) == "" {
					open[metric] = false
				} else {
					used[metric] += size(name)
				}
			}
		}
		if open[&res.Best] {
			need[i]++
			if opt.Feasible(need, len(gpus)) {
				used[&res.Best] += size(name)
			} else {
				open[&res.Best] = false
			}
		}
	}
	res.Tessera = float64(used[&res.Tessera]) / float64(total)
	res.Ascending = float64(used[&res.Ascending]) / float64(total)
	res.BestFit = float64(used[&res.BestFit]) / float64(total)
	res.Best = float64(used[&res.Best]) / float64(total)
	res.Weighted = float64(used[&res.Weighted]) / float64(total)
	return res
}
