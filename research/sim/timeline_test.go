package sim

import (
	"bytes"
	"context"
	"image/png"
	"math"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/tessera-gpu/tessera/pkg/placement"
)

// handTimeline is one node of two 16 GiB GPUs and two tenants, each
// guaranteed one GPU's memory: tenant 0 runs A (from 0) and B (from 1), one
// whole GPU each for 100 s, both best effort; tenant 1's C (latency
// sensitive) asks for one GPU at 10 and runs 50 s.
func handTimeline() (*Fleet, []TimedPod, []int) {
	fleet := NewFleet([]NodeSpec{{Name: "n0", CPU: 16000, Memory: 65536, GPUs: 2, Model: "V100M16"}})
	gpu := placement.Request{CPU: 1000, Memory: 1024, GPUs: 1, Milli: placement.WholeGPU}
	pods := []TimedPod{
		{Pod: Pod{Name: "A", Request: gpu}, Arrival: 0, Runtime: 100, Priority: 0},
		{Pod: Pod{Name: "B", Request: gpu}, Arrival: 1, Runtime: 100, Priority: 0},
		{Pod: Pod{Name: "C", Request: gpu}, Arrival: 10, Runtime: 50, Priority: 2},
	}
	return fleet, pods, []int{0, 0, 1}
}

func handOptions(b Budgets) TimelineOptions {
	return TimelineOptions{Policy: PolicyStock, Weight: DefaultWeight, Budgets: b, Tenants: 2, ElasticBudget: 1,
		Speedup: 1, ReclaimDelay: 5, ReclaimInterval: 10, MaxEvents: 100}
}

func runHand(t *testing.T, opts TimelineOptions) seedTimeline {
	t.Helper()
	fleet, pods, tenantOf := handTimeline()
	workload, err := workloadOf([]Pod{pods[0].Pod}, fleet)
	if err != nil {
		t.Fatal(err)
	}
	res, err := newTimeline(context.Background(), fleet, workload, pods, tenantOf, opts, 0).run()
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// TestTimelineByHand checks the measures against the timeline worked out by
// hand (capacity 2 GPUs; "contended" while the pods that exist ask for 2
// GPUs or more).
//
// Hard: A runs [0,100); B waits for tenant 0's budget until A ends and runs
// [100,200); C runs [10,60). Contended: [1,10) with 1 GPU idle, [10,60)
// none idle, [60,100) 1 idle: 99 s, 49 idle GPU-seconds, 49/(2·99) =
// 24.75 %. C fits on arrival: no owner waits.
//
// Elastic: B borrows the second GPU at 1. C is owed at 10 and finds no
// room; reclaim evicts B (tenant 0 keeps its guarantee with A; B is newer
// than A), whose GPU is free at 15 (delay 5): C runs [15,65), waited 5 s.
// B held its GPU 14 s for nothing; it comes back pending at 15 and runs
// again from 65 to 165. Contended: [1,65)
// with both GPUs allocated, [65,100) too: 99 s, 0 % idle.
func TestTimelineByHand(t *testing.T) {
	for name, tc := range map[string]struct {
		budgets Budgets
		want    seedTimeline
	}{
		"hard": {BudgetsHard, seedTimeline{contended: 99, unallocated: 49 * placement.WholeGPU, placements: 3, end: 200}},
		"elastic": {BudgetsElastic, seedTimeline{contended: 99, unallocated: 0, waits: []float64{5}, evictions: 1,
			placements: 4, end: 165, lostWork: 14, peakBorrowed: 16 << 30}},
	} {
		t.Run(name, func(t *testing.T) {
			got := runHand(t, handOptions(tc.budgets))
			got.events = 0
			if diff := cmp.Diff(tc.want, got, cmp.AllowUnexported(seedTimeline{})); diff != "" {
				t.Errorf("measures (-want +got):\n%s", diff)
			}
		})
	}
	fleet, _, _ := handTimeline()
	hard := runHand(t, handOptions(BudgetsHard))
	if got := unallocatedShare(hard, fleet); math.Abs(got-24.7474) > 0.001 {
		t.Errorf("hard: unallocated %.4f%%, want 49/198 = 24.7475%%", got)
	}
}

// TestTimelineNoReclaimAtGuarantee: when the owner's pod arrives while the
// other tenant holds only its guarantee, nothing is evicted and the owner
// waits for a pod to end.
func TestTimelineNoReclaimAtGuarantee(t *testing.T) {
	fleet, pods, _ := handTimeline()
	workload, err := workloadOf([]Pod{pods[0].Pod}, fleet)
	if err != nil {
		t.Fatal(err)
	}
	// A of tenant 0 and B of tenant 1 each hold their guarantee; C of
	// tenant 1 is beyond it, so it is not owed and waits for A to end.
	got, err := newTimeline(context.Background(), fleet, workload, pods, []int{0, 1, 1}, handOptions(BudgetsElastic), 0).run()
	if err != nil {
		t.Fatal(err)
	}
	if got.evictions != 0 || len(got.waits) != 0 || got.end != 150 {
		t.Errorf("evictions %d, owner waits %v, end %g; want none, none and C run [100,150) on A's GPU", got.evictions, got.waits, got.end)
	}
}

func TestTimelineIsBounded(t *testing.T) {
	fleet, pods, tenantOf := handTimeline()
	workload, err := workloadOf([]Pod{pods[0].Pod}, fleet)
	if err != nil {
		t.Fatal(err)
	}
	opts := handOptions(BudgetsElastic)
	opts.MaxEvents = 4
	if _, err := newTimeline(context.Background(), fleet, workload, pods, tenantOf, opts, 0).run(); err == nil || !strings.Contains(err.Error(), "more than 4 events") {
		t.Errorf("run with 4 events at most: %v, want more than 4 events", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := newTimeline(ctx, fleet, workload, pods, tenantOf, handOptions(BudgetsElastic), 0).run(); err == nil {
		t.Errorf("run on a cancelled context: no error")
	}
}

func TestReadTimedPods(t *testing.T) {
	header := "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n"
	got, err := ReadTimedPods(strings.NewReader(header +
		"a,1000,100,1,1000,,LS,Running,10,110,30\n" +
		"b,1000,100,1,500,,BE,Pending,20,50,\n" +
		"c,1000,100,0,0,,Burstable,Running,5,,5\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []TimedPod{
		{Pod: Pod{Name: "a", Request: placement.Request{CPU: 1000, Memory: 100, GPUs: 1, Milli: 1000}}, Arrival: 10, Runtime: 80, Priority: 2},
		{Pod: Pod{Name: "b", Request: placement.Request{CPU: 1000, Memory: 100, GPUs: 1, Milli: 500}}, Arrival: 20, Runtime: 30, Priority: 0},
		{Pod: Pod{Name: "c", Request: placement.Request{CPU: 1000, Memory: 100}}, Arrival: 5, Runtime: -1, Priority: 1},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ReadTimedPods (-want +got):\n%s", diff)
	}
	for name, tc := range map[string]struct{ in, want string }{
		"no time columns":         {"name,cpu_milli,memory_mib,num_gpu,gpu_milli\na,1,1,0,0\n", `header lacks column "creation_time"`},
		"deleted before start":    {header + "a,1,1,0,0,,LS,Running,10,20,30\n", "line 2 (a): deletion_time 20 before the pod started at 30"},
		"scheduled before create": {header + "a,1,1,0,0,,LS,Running,10,20,5\n", "line 2 (a): scheduled_time 5 before creation_time 10"},
		"no creation":             {header + "a,1,1,0,0,,LS,Running,,20,5\n", "line 2 (a): column creation_time: empty"},
		"bad time":                {header + "a,1,1,0,0,,LS,Running,x,20,5\n", `column creation_time: "x" is not a time`},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ReadTimedPods(strings.NewReader(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want %q", err, tc.want)
			}
		})
	}
}

func TestRunTimelineAndPlot(t *testing.T) {
	fleet, pods, _ := handTimeline()
	var results []TimelineResult
	for _, b := range []Budgets{BudgetsHard, BudgetsElastic} {
		opts := handOptions(b)
		opts.SeriesStep = 10
		r, err := RunTimeline(context.Background(), fleet, pods, 3, 2, opts, nil)
		if err != nil {
			t.Fatal(err)
		}
		if r.Placements.Mean < 3 || len(r.Series) == 0 {
			t.Errorf("%s: placements %v, %d series points; want 3 or more and a series", b, r.Placements, len(r.Series))
		}
		if b == BudgetsHard && r.PeakBorrowedPercent.Mean != 0 {
			t.Errorf("hard budgets: a tenant borrowed %.1f%% of the fleet", r.PeakBorrowedPercent.Mean)
		}
		results = append(results, r)
	}
	var buf bytes.Buffer
	if err := WriteTimelinePlot(&buf, "hand", results); err != nil {
		t.Fatal(err)
	}
	if _, err := png.Decode(&buf); err != nil {
		t.Errorf("plot is not a PNG: %v", err)
	}
	if _, err := RunTimeline(context.Background(), fleet, pods, 1, 1, TimelineOptions{Budgets: "soft", Tenants: 1, Speedup: 1, MaxEvents: 1}, nil); err == nil {
		t.Errorf("budgets soft: no error")
	}
}

// TestTimelineReleasesShares: a share's end gives its GPU's capacity back
// to the allocator, for another share and then for a whole GPU.
func TestTimelineReleasesShares(t *testing.T) {
	fleet := NewFleet([]NodeSpec{{Name: "n0", CPU: 16000, Memory: 65536, GPUs: 1, Model: "V100M32"}})
	share := placement.Request{CPU: 100, Memory: 100, GPUs: 1, Milli: 600}
	whole := placement.Request{CPU: 100, Memory: 100, GPUs: 1, Milli: placement.WholeGPU}
	pods := []TimedPod{
		{Pod: Pod{Name: "s1", Request: share}, Arrival: 0, Runtime: 10},
		{Pod: Pod{Name: "s2", Request: share}, Arrival: 1, Runtime: 10},
		{Pod: Pod{Name: "w", Request: whole}, Arrival: 2, Runtime: 10},
	}
	workload, err := workloadOf([]Pod{pods[0].Pod, pods[2].Pod}, fleet)
	if err != nil {
		t.Fatal(err)
	}
	opts := handOptions(BudgetsHard)
	opts.Tenants = 1
	got, err := newTimeline(context.Background(), fleet, workload, pods, []int{0, 0, 0}, opts, 0).run()
	if err != nil {
		t.Fatal(err)
	}
	// s1 [0,10), s2 [10,20), w [20,30).
	if got.placements != 3 || got.unplaced != 0 || got.end != 30 {
		t.Errorf("placements %d, unplaced %d, end %g; want 3, 0 and 30", got.placements, got.unplaced, got.end)
	}
}
