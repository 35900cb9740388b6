package sim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/tessera-gpu/tessera/pkg/placement"
)

// Stat is a mean and standard deviation over seeds.
type Stat struct {
	Mean   float64 `json:"mean"`
	StdDev float64 `json:"stdDev"`
}

func statOf(values []float64) Stat {
	var s Stat
	for _, v := range values {
		s.Mean += v / float64(len(values))
	}
	for _, v := range values {
		s.StdDev += (v - s.Mean) * (v - s.Mean) / float64(len(values))
	}
	s.StdDev = math.Sqrt(s.StdDev)
	return s
}

// TimelineResult of a time-driven replay, over seeds.
type TimelineResult struct {
	Policy       Policy    `json:"policy"`
	Budgets      Budgets   `json:"budgets"`
	Tenants      int       `json:"tenants"`
	Split        []float64 `json:"split,omitempty"`
	Seeds        int       `json:"seeds"`
	Speedup      float64   `json:"speedup"`
	ReclaimDelay float64   `json:"reclaimDelaySeconds"`
	GPUs         int64     `json:"gpus"`
	// UnallocatedPercent is the GPU capacity that no running pod's request
	// uses, as a share of capacity, averaged over the time during which the
	// GPU demand of the pods that exist (running, being evicted, or
	// pending) is at least the fleet's capacity ("contended"):
	// ∫(capacity − allocated) dt / ∫capacity dt over that time.
	UnallocatedPercent Stat `json:"unallocatedPercent"`
	// ContendedHours is how long demand was at least the capacity.
	ContendedHours Stat `json:"contendedHours"`
	// Waits are owner waits, in seconds: a pending pod is owed when its
	// tenant's usage (less pods being evicted) plus the pod's least cost,
	// and that of the tenant's pods pending before it, is within the
	// tenant's guarantee; an owed pod that does not fit starts waiting, and
	// its wait ends when it is placed. Percentiles are per seed, then
	// averaged.
	OwedWaits Stat `json:"owedWaits"`
	WaitP50   Stat `json:"waitP50Seconds"`
	WaitP95   Stat `json:"waitP95Seconds"`
	WaitMax   Stat `json:"waitMaxSeconds"`
	// OwedUnplaced are owed pods still pending at the end (not in Waits).
	OwedUnplaced Stat `json:"owedUnplaced"`
	Evictions    Stat `json:"evictions"`
	// LostGPUHours is the GPU time evicted pods held, from their start until
	// their devices were free: work lost, since they start over.
	LostGPUHours Stat `json:"lostGPUHours"`
	// PeakBorrowedPercent is the most any tenant held above its guarantee,
	// in per cent of the fleet's GPU memory (0 with hard budgets).
	PeakBorrowedPercent Stat `json:"peakBorrowedPercent"`
	Placements          Stat `json:"placements"`
	// Unplaced are pods still pending when the last pod ends.
	Unplaced       Stat          `json:"unplaced"`
	Events         int           `json:"events"`
	Series         []SeriesPoint `json:"series,omitempty"`
	ElapsedSeconds float64       `json:"elapsedSeconds"`
}

// RunTimeline replays the timed pods seed by seed (seed i splits the pods
// among the tenants and breaks the scheduler's ties) and averages the
// measures.
func RunTimeline(ctx context.Context, fleet *Fleet, pods []TimedPod, seeds, workers int, opts TimelineOptions, progress io.Writer) (TimelineResult, error) {
	if seeds < 1 || opts.Tenants < 1 || opts.Speedup <= 0 || opts.ReclaimDelay < 0 || opts.MaxEvents < 1 || fleet.Capacity == 0 {
		return TimelineResult{}, fmt.Errorf("timeline: need seeds, tenants and max events ≥ 1, speedup > 0, reclaim delay ≥ 0 and a fleet with GPUs")
	}
	if len(opts.Split) > 0 && len(opts.Split) != opts.Tenants {
		return TimelineResult{}, fmt.Errorf("timeline: %d split weights for %d tenants", len(opts.Split), opts.Tenants)
	}
	for _, w := range opts.Split {
		if w < 0 || math.IsNaN(w) {
			return TimelineResult{}, fmt.Errorf("timeline: split weight %g: want ≥ 0", w)
		}
	}
	if opts.Budgets != BudgetsHard && opts.Budgets != BudgetsElastic {
		return TimelineResult{}, fmt.Errorf("timeline: budgets %q: want hard or elastic", opts.Budgets)
	}
	plain := make([]Pod, len(pods))
	for i, p := range pods {
		plain[i] = p.Pod
	}
	workload, err := workloadOf(plain, fleet)
	if err != nil {
		return TimelineResult{}, fmt.Errorf("timeline: %w", err)
	}
	start := time.Now()
	results := make([]seedTimeline, seeds)
	errs := make([]error, seeds)
	next := make(chan int)
	var wg sync.WaitGroup
	var mu sync.Mutex
	for range max(workers, 1) {
		wg.Go(func() {
			for seed := range next {
				tl := newTimeline(ctx, fleet, workload, pods, assignTenants(len(pods), opts.Tenants, opts.Split, seed), opts, seed)
				results[seed], errs[seed] = tl.run()
				if progress != nil {
					mu.Lock()
					_, _ = fmt.Fprintf(progress, "%s %s: seed %d: unallocated %.2f%% over %.1f contended hours, %d evictions, %s\n",
						opts.Budgets, opts.Policy, seed, unallocatedShare(results[seed], fleet), results[seed].contended/3600, results[seed].evictions, time.Since(start).Round(time.Second))
					mu.Unlock()
				}
			}
		})
	}
	for seed := range seeds {
		next <- seed
	}
	close(next)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return TimelineResult{}, err
	}
	out := TimelineResult{Policy: opts.Policy, Budgets: opts.Budgets, Tenants: opts.Tenants, Split: opts.Split, Seeds: seeds,
		Speedup: opts.Speedup, ReclaimDelay: opts.ReclaimDelay, GPUs: fleet.Capacity / placement.WholeGPU}
	per := func(f func(r seedTimeline) float64) Stat {
		v := make([]float64, seeds)
		for i, r := range results {
			v[i] = f(r)
		}
		return statOf(v)
	}
	out.UnallocatedPercent = per(func(r seedTimeline) float64 { return unallocatedShare(r, fleet) })
	out.ContendedHours = per(func(r seedTimeline) float64 { return r.contended / 3600 })
	waits := func(q float64) func(r seedTimeline) float64 {
		return func(r seedTimeline) float64 {
			w := slices.Clone(r.waits)
			slices.Sort(w)
			return percentile(w, q)
		}
	}
	out.OwedWaits = per(func(r seedTimeline) float64 { return float64(len(r.waits)) })
	out.WaitP50, out.WaitP95, out.WaitMax = per(waits(0.5)), per(waits(0.95)), per(waits(1))
	out.OwedUnplaced = per(func(r seedTimeline) float64 { return float64(r.owedOpen) })
	out.Evictions = per(func(r seedTimeline) float64 { return float64(r.evictions) })
	out.LostGPUHours = per(func(r seedTimeline) float64 { return r.lostWork / 3600 })
	out.PeakBorrowedPercent = per(func(r seedTimeline) float64 {
		return 100 * float64(r.peakBorrowed) / float64(fleet.totalMemory())
	})
	out.Placements = per(func(r seedTimeline) float64 { return float64(r.placements) })
	out.Unplaced = per(func(r seedTimeline) float64 { return float64(r.unplaced) })
	points := len(results[0].series)
	for _, r := range results {
		out.Events += r.events
		points = min(points, len(r.series))
	}
	out.Series = make([]SeriesPoint, points)
	for _, r := range results {
		for i := range points {
			out.Series[i].Seconds = r.series[i].Seconds
			out.Series[i].DemandPercent += r.series[i].DemandPercent / float64(seeds)
			out.Series[i].AllocatedPercent += r.series[i].AllocatedPercent / float64(seeds)
		}
	}
	out.ElapsedSeconds = time.Since(start).Seconds()
	return out, nil
}

func unallocatedShare(r seedTimeline, fleet *Fleet) float64 {
	if r.contended == 0 {
		return 0
	}
	return 100 * r.unallocated / (r.contended * float64(fleet.Capacity))
}
