package sim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/tessera-gpu/tessera/pkg/placement"
)

// Options of a trace replay.
type Options struct {
	Policy Policy
	// Seeds is the number of Monte-Carlo runs; run i uses seed i.
	Seeds int
	// Arrivals is where a run stops: arriving GPU demand as a share of the
	// fleet's GPU capacity (1 = 100 %).
	Arrivals float64
	// Weight of tessera-scheduler's fragmentation score against the stock
	// scores (each 0..100).
	Weight int64
	// Tolerance, when positive, replaces placement.Tolerance in
	// tessera-scheduler's score (to try others).
	Tolerance float64
	// Workers run seeds in parallel.
	Workers int
	// Shuffle replays the trace as FGD's own simulator does: every pod of
	// the trace once, in an order drawn from the seed, then pods drawn at
	// random with replacement; otherwise every pod is drawn with
	// replacement.
	Shuffle bool
	// Progress receives a line per finished seed; nil for none.
	Progress io.Writer
}

// Point is the state of a run when a share of arrivals has come.
type Point struct {
	ArrivedPercent   float64 `json:"arrivedPercent"`
	AllocatedPercent float64 `json:"allocatedPercent"`
}

// Result of a trace replay, averaged over seeds.
type Result struct {
	Policy Policy `json:"policy"`
	Seeds  int    `json:"seeds"`
	// UnallocatedPercent is the share of GPU capacity that no pod's request
	// uses when arrivals stop, mean over seeds. A pod given a whole GPU for a
	// fractional request uses only its request; the rest counts as
	// unallocated.
	UnallocatedPercent float64 `json:"unallocatedPercent"`
	// UnallocatedStdDev is the standard deviation over seeds.
	UnallocatedStdDev  float64   `json:"unallocatedStdDev"`
	UnallocatedPerSeed []float64 `json:"unallocatedPerSeed"`
	ArrivalsPercent    float64   `json:"arrivalsPercent"`
	GPUs               int64     `json:"gpus"`
	Nodes              int       `json:"nodes"`
	// PodsArrived and PodsFailed are means over seeds.
	PodsArrived float64 `json:"podsArrived"`
	PodsFailed  float64 `json:"podsFailed"`
	// AllocatorCalls counts runs of kube-scheduler's allocator; ModelMisses
	// counts nodes the node-choice model thought feasible that the
	// allocator refused, or where it chose other GPUs than the model
	// expected (0 means the model and the allocator agreed throughout).
	AllocatorCalls int     `json:"allocatorCalls"`
	ModelMisses    int     `json:"modelMisses"`
	Curve          []Point `json:"curve"`
	ElapsedSeconds float64 `json:"elapsedSeconds"`
}

type seedResult struct {
	unallocated     float64
	arrived, failed int
	calls, misses   int
	curve           []Point
}

// Run replays the pods against the fleet with the paper's Monte-Carlo
// method: pods are drawn at random with replacement (with opts.Shuffle, after
// every pod of the trace once in a seeded order; the same sequence for every
// policy of a seed) and placed one by one until the arriving GPU demand
// reaches opts.Arrivals of the capacity; pods that fit nowhere are skipped.
func Run(ctx context.Context, fleet *Fleet, pods []Pod, opts Options) (Result, error) {
	if opts.Seeds <= 0 || opts.Arrivals <= 0 || fleet.Capacity == 0 {
		return Result{}, fmt.Errorf("replay: need seeds > 0, arrivals > 0 and a fleet with GPUs")
	}
	workload, err := workloadOf(pods, fleet)
	if err != nil {
		return Result{}, fmt.Errorf("replay: %w", err)
	}
	start := time.Now()
	results := make([]seedResult, opts.Seeds)
	errs := make([]error, opts.Seeds)
	seeds := make(chan int)
	var wg sync.WaitGroup
	var mu sync.Mutex
	done := 0
	for range max(opts.Workers, 1) {
		wg.Go(func() {
			for seed := range seeds {
				results[seed], errs[seed] = runSeed(ctx, fleet, pods, workload, opts, seed)
				mu.Lock()
				done++
				if opts.Progress != nil {
					_, _ = fmt.Fprintf(opts.Progress, "%s: seed %d done (%d/%d), unallocated %.2f%%, %s\n",
						opts.Policy, seed, done, opts.Seeds, results[seed].unallocated, time.Since(start).Round(time.Second))
				}
				mu.Unlock()
			}
		})
	}
	for seed := range opts.Seeds {
		seeds <- seed
	}
	close(seeds)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return Result{}, err
	}

	out := Result{Policy: opts.Policy, Seeds: opts.Seeds, ArrivalsPercent: 100 * opts.Arrivals,
		GPUs: fleet.Capacity / placement.WholeGPU, Nodes: len(fleet.Specs)}
	points := len(results[0].curve)
	for _, r := range results {
		points = min(points, len(r.curve))
	}
	out.Curve = make([]Point, points)
	for _, r := range results {
		out.UnallocatedPerSeed = append(out.UnallocatedPerSeed, r.unallocated)
		out.UnallocatedPercent += r.unallocated / float64(opts.Seeds)
		out.PodsArrived += float64(r.arrived) / float64(opts.Seeds)
		out.PodsFailed += float64(r.failed) / float64(opts.Seeds)
		out.AllocatorCalls += r.calls
		out.ModelMisses += r.misses
		for i := range points {
			out.Curve[i].ArrivedPercent = r.curve[i].ArrivedPercent
			out.Curve[i].AllocatedPercent += r.curve[i].AllocatedPercent / float64(opts.Seeds)
		}
	}
	for _, u := range out.UnallocatedPerSeed {
		out.UnallocatedStdDev += (u - out.UnallocatedPercent) * (u - out.UnallocatedPercent) / float64(opts.Seeds)
	}
	out.UnallocatedStdDev = math.Sqrt(out.UnallocatedStdDev)
	out.ElapsedSeconds = time.Since(start).Seconds()
	return out, nil
}

// workloadOf is the request mix tessera-scheduler measures fragmentation
// against: here the trace itself, as FGD does, with the pressure of its
// model-pinned pods on the fleet's GPU models.
func workloadOf(pods []Pod, fleet *Fleet) (placement.Workload, error) {
	reqs := make([]placement.Request, len(pods))
	for i, p := range pods {
		reqs[i] = p.Request
	}
	w, err := placement.NewWorkload(reqs)
	if err != nil {
		return w, err
	}
	return w.WithCapacity(fleet.capacityByModel()), nil
}

// capacityByModel is the fleet's milli-GPUs of each GPU model.
func (f *Fleet) capacityByModel() map[string]int64 {
	out := map[string]int64{}
	for _, s := range f.Specs {
		if s.GPUs > 0 {
			out[s.Model] += int64(s.GPUs) * placement.WholeGPU
		}
	}
	return out
}

func newScheduler(fleet *Fleet, workload placement.Workload, opts Options, seed int) *Scheduler {
	s := &Scheduler{
		fleet: fleet, states: fleet.newStates(), policy: opts.Policy,
		rng:      rand.New(rand.NewPCG(uint64(seed), 0x5c4ed)),
		workload: workload, weight: opts.Weight,
		// tessera-scheduler chooses nodes; the allocator takes the first
		// GPU that fits. FGD chooses the GPU too, and breaks ties between
		// nodes by a fixed node order.
		measure: placement.Workload.Fragmentation, choice: placement.ChoiceFirstFit,
		cache: make([]map[placement.Request]cached, len(fleet.Specs)),
	}
	if opts.Policy == PolicyTessera {
		s.tolerance = placement.Tolerance
		if opts.Tolerance > 0 {
			s.tolerance = opts.Tolerance
		}
		s.order = make([]int64, len(fleet.Specs))
		for i, spec := range fleet.Specs {
			s.order[i] = placement.NodeOrder(spec.Name, uint64(seed))
		}
	}
	if opts.Policy == PolicyFGD {
		s.workload = fgdTypical(workload)
		s.measure, s.choice = placement.Workload.FGD, placement.ChoiceFGD
		s.rank = s.rng.Perm(len(fleet.Specs))
	}
	for i := range s.cache {
		s.cache[i] = map[placement.Request]cached{}
	}
	return s
}

func runSeed(ctx context.Context, fleet *Fleet, pods []Pod, workload placement.Workload, opts Options, seed int) (seedResult, error) {
	sched := newScheduler(fleet, workload, opts, seed)
	next := arrivals(seed, len(pods), opts.Shuffle)
	var res seedResult
	var arrived, used int64
	limit := int64(opts.Arrivals * float64(fleet.Capacity))
	nextPoint := int64(0)
	record := func() {
		for nextPoint <= arrived && nextPoint <= limit {
			res.curve = append(res.curve, Point{
				ArrivedPercent:   100 * float64(nextPoint) / float64(fleet.Capacity),
				AllocatedPercent: 100 * float64(used) / float64(fleet.Capacity),
			})
			nextPoint += fleet.Capacity / 100
		}
	}
	for uid := 0; arrived < limit; uid++ {
		if err := ctx.Err(); err != nil {
			return res, fmt.Errorf("replay seed %d: %w", seed, err)
		}
		pod := pods[next()]
		res.arrived++
		arrived += pod.Request.Demand()
		placed, err := place(ctx, fleet, sched, pod, uid, &res)
		if err != nil {
			return res, fmt.Errorf("replay seed %d: %w", seed, err)
		}
		if placed {
			used += pod.Request.Demand()
		} else {
			res.failed++
		}
		record()
	}
	res.unallocated = 100 * float64(fleet.Capacity-used) / float64(fleet.Capacity)
	return res, nil
}

// arrivals returns the indexes of a seed's pods in arrival order, one per
// call: drawn with replacement, or with shuffle first a permutation of all n.
func arrivals(seed, n int, shuffle bool) func() int {
	draw := newDraw(seed)
	var perm []int
	if shuffle {
		perm = draw.Perm(n)
	}
	return func() int {
		if len(perm) > 0 {
			i := perm[0]
			perm = perm[1:]
			return i
		}
		return draw.IntN(n)
	}
}

// newDraw is the random source of a seed's pod sequence, apart from the
// scheduler's, so that every policy sees the same pods.
func newDraw(seed int) *rand.Rand { return rand.New(rand.NewPCG(uint64(seed), 0x0be4b)) }

// place schedules one pod: the model picks a node, the allocator allocates
// on it. When the allocator refuses a node the model thought feasible, or
// chooses other GPUs than the model expected, res counts a model miss (the
// allocator is right: the pod goes on to the next node).
func place(ctx context.Context, fleet *Fleet, sched *Scheduler, pod Pod, uid int, res *seedResult) (bool, error) {
	var exclude map[int]bool
	r := sched.request(pod)
	for {
		node, pin := sched.Pick(pod, exclude)
		if node < 0 {
			return false, nil
		}
		want := pin
		if want == nil {
			want = sched.states[node].node.FirstFit(r)
		}
		gpus, err := fleet.allocate(ctx, sched.states, node, uid, r, pin)
		if err != nil {
			return false, err
		}
		if res != nil && r.GPUs > 0 {
			res.calls++
		}
		if gpus == nil {
			if res != nil {
				res.misses++
			}
			if exclude == nil {
				exclude = map[int]bool{}
			}
			exclude[node] = true
			continue
		}
		if res != nil && r.GPUs > 0 && !slices.Equal(gpus, want) {
			res.misses++
		}
		return true, nil
	}
}
