package sim

import (
	"bytes"
	"context"
	"encoding/json"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/dynamic-resource-allocation/structured"
	"k8s.io/utils/ptr"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
)

func shareResult(device, share string, gib int64) []resourceapi.DeviceRequestAllocationResult {
	return []resourceapi.DeviceRequestAllocationResult{{
		Request: "share", Driver: gpuapi.DriverName, Pool: "tenancy-node", Device: device,
		ShareID: ptr.To(types.UID(share)),
		ConsumedCapacity: map[resourceapi.QualifiedName]resource.Quantity{
			gpuapi.CapMemory:  *resource.NewQuantity(gib<<30, resource.BinarySI),
			gpuapi.CapCompute: *resource.NewQuantity(10, resource.DecimalSI),
		},
	}}
}

// TestClaimTrackerGather follows count-once.patch's own test
// (research/patches/scheduler/testdata/count_once_test.go): a share in flight
// and in the cache, beside one only in the cache and one only in flight.
func TestClaimTrackerGather(t *testing.T) {
	both, cacheOnly, flightOnly := shareResult("gpu-0-shared", "a", 30), shareResult("gpu-0-shared", "b", 30), shareResult("gpu-0-shared", "c", 30)
	moved := shareResult("gpu-0-shared", "d", 30)
	for name, tc := range map[string]struct {
		acct      Accounting
		cache     map[types.UID][]resourceapi.DeviceRequestAllocationResult
		inFlight  map[types.UID][]resourceapi.DeviceRequestAllocationResult
		wantGiB   int64
		wantShare int
	}{
		"kube-scheduler counts a written share in flight twice": {
			acct:     AccountingDoubleCount,
			cache:    map[types.UID][]resourceapi.DeviceRequestAllocationResult{"a": both, "b": cacheOnly},
			inFlight: map[types.UID][]resourceapi.DeviceRequestAllocationResult{"a": both, "c": flightOnly},
			wantGiB:  120, wantShare: 3,
		},
		"tessera-scheduler counts it once": {
			acct:     AccountingCountOnce,
			cache:    map[types.UID][]resourceapi.DeviceRequestAllocationResult{"a": both, "b": cacheOnly},
			inFlight: map[types.UID][]resourceapi.DeviceRequestAllocationResult{"a": both, "c": flightOnly},
			wantGiB:  90, wantShare: 3,
		},
		"tessera-scheduler counts in full an in-flight allocation the cache shows otherwise": {
			acct:     AccountingCountOnce,
			cache:    map[types.UID][]resourceapi.DeviceRequestAllocationResult{"a": moved},
			inFlight: map[types.UID][]resourceapi.DeviceRequestAllocationResult{"a": both},
			wantGiB:  60, wantShare: 2,
		},
	} {
		t.Run(name, func(t *testing.T) {
			state := (&claimTracker{cache: tc.cache, inFlight: tc.inFlight}).gather(tc.acct)
			id := structured.MakeDeviceID(gpuapi.DriverName, "tenancy-node", "gpu-0-shared")
			got := state.AggregatedCapacity[id][gpuapi.CapMemory]
			if got == nil || got.Value() != tc.wantGiB<<30 {
				t.Errorf("memory counted on gpu-0-shared: %v, want %dGi", got, tc.wantGiB)
			}
			if state.AllocatedSharedDeviceIDs.Len() != tc.wantShare {
				t.Errorf("share IDs: %d, want %d", state.AllocatedSharedDeviceIDs.Len(), tc.wantShare)
			}
		})
	}
}

type burstFigures struct {
	OneByOne, Burst, OneByOneFree, BurstFree, Worse int
}

func figures(r BurstResult) burstFigures {
	return burstFigures{r.OneByOneGPUsTouched, r.BurstGPUsTouched, r.OneByOneGPUsLeftFree, r.BurstGPUsLeftFree, r.BurstsOnMoreGPUs}
}

// TestBurstSpreadsUnderKubeSchedulerOnly: on the e2e's setup and on the
// issue's eight-GPU node, kube-scheduler's double count makes every burst
// open GPUs that the same shares one by one leave free; tessera-scheduler's
// bursts pack as one by one.
func TestBurstSpreadsUnderKubeSchedulerOnly(t *testing.T) {
	eightGPUs := BurstOptions{GPUs: 8, BusyGPUs: 4, Shares: 8, MemoryMinGiB: 30, MemoryMaxGiB: 30, ComputePercent: 10, Seeds: 2}
	for name, tc := range map[string]struct {
		opts              BurstOptions
		kube, tesseraSchd burstFigures
	}{
		"e2e setup: four shares of 25-34Gi on two H200s, 10 seeds": {
			opts:        DefaultBurstOptions(),
			kube:        burstFigures{OneByOne: 10, Burst: 20, OneByOneFree: 10, BurstFree: 0, Worse: 10},
			tesseraSchd: burstFigures{OneByOne: 10, Burst: 10, OneByOneFree: 10, BurstFree: 10},
		},
		"eight 30Gi shares on an eight-GPU node with four free": {
			opts:        eightGPUs,
			kube:        burstFigures{OneByOne: 4, Burst: 8, OneByOneFree: 4, BurstFree: 0, Worse: 2},
			tesseraSchd: burstFigures{OneByOne: 4, Burst: 4, OneByOneFree: 4, BurstFree: 4},
		},
	} {
		t.Run(name, func(t *testing.T) {
			results, err := RunBurst(context.Background(), tc.opts, BurstSchedulers)
			if err != nil {
				t.Fatal(err)
			}
			if len(results) != 2 {
				t.Fatalf("got %d results, want 2", len(results))
			}
			if diff := cmp.Diff(tc.kube, figures(results[0])); diff != "" {
				t.Errorf("kube-scheduler (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.tesseraSchd, figures(results[1])); diff != "" {
				t.Errorf("tessera-scheduler (-want +got):\n%s", diff)
			}
			for _, r := range results {
				if r.SharesUnplaced != 0 {
					t.Errorf("%s: %d shares unplaced", r.Name, r.SharesUnplaced)
				}
			}
		})
	}
}

// TestBurstWithNothingWrittenPacksLikeOneByOne: the double count needs the
// allocation written while the pod is in flight; a burst filtered before any
// write lands packs as one by one under kube-scheduler too.
func TestBurstWithNothingWrittenPacksLikeOneByOne(t *testing.T) {
	opts := DefaultBurstOptions()
	opts.Unwritten = opts.Shares
	results, err := RunBurst(context.Background(), opts, BurstSchedulers[:1])
	if err != nil {
		t.Fatal(err)
	}
	want := burstFigures{OneByOne: 10, Burst: 10, OneByOneFree: 10, BurstFree: 10}
	if diff := cmp.Diff(want, figures(results[0])); diff != "" {
		t.Errorf("kube-scheduler, nothing written (-want +got):\n%s", diff)
	}
}

// TestTesseraSchedulerBurstPacksWhateverIsWritten: under count-once, how many
// of the burst's writes have landed changes nothing.
func TestTesseraSchedulerBurstPacksWhateverIsWritten(t *testing.T) {
	for unwritten := range 5 {
		opts := DefaultBurstOptions()
		opts.Unwritten = unwritten
		results, err := RunBurst(context.Background(), opts, BurstSchedulers[1:])
		if err != nil {
			t.Fatal(err)
		}
		want := burstFigures{OneByOne: 10, Burst: 10, OneByOneFree: 10, BurstFree: 10}
		if diff := cmp.Diff(want, figures(results[0])); diff != "" {
			t.Errorf("tessera-scheduler, %d unwritten (-want +got):\n%s", unwritten, diff)
		}
	}
}

// TestBurstSizesAreTheE2Es: seed i draws the sizes that
// e2e/localcluster/burst_test.go draws for seed i (its expression, copied),
// in each of its setups (shares, least and most GiB, copied).
func TestBurstSizesAreTheE2Es(t *testing.T) {
	for _, setup := range []struct{ shares, minGiB, maxGiB int }{{4, 25, 34}, {6, 28, 34}, {8, 28, 34}} {
		opts := DefaultBurstOptions()
		opts.Shares, opts.MemoryMinGiB, opts.MemoryMaxGiB = setup.shares, int64(setup.minGiB), int64(setup.maxGiB)
		for seed := range 10 {
			rng := rand.New(rand.NewPCG(uint64(seed), 29))
			var want []int64
			for range setup.shares {
				want = append(want, int64(setup.minGiB+rng.IntN(setup.maxGiB-setup.minGiB+1)))
			}
			if diff := cmp.Diff(want, burstSizes(opts, seed)); diff != "" {
				t.Errorf("%d shares of %d-%dGi, seed %d (-want +got):\n%s", setup.shares, setup.minGiB, setup.maxGiB, seed, diff)
			}
		}
	}
}

// TestBurstWithoutBindingConditionsPacksLikeOneByOne: on a node without
// tenancy PreBind takes each share out of flight as it writes it, so no
// share counts twice and kube-scheduler's bursts pack as one by one, where
// the same node with binding conditions spreads them (the e2e's eight-GPU
// setup, two seeds).
func TestBurstWithoutBindingConditionsPacksLikeOneByOne(t *testing.T) {
	opts := BurstOptions{GPUs: 8, BusyGPUs: 4, Shares: 8, MemoryMinGiB: 28, MemoryMaxGiB: 34, ComputePercent: 10, Seeds: 2}
	for _, tc := range []struct {
		without bool
		want    burstFigures
	}{
		{without: false, want: burstFigures{OneByOne: 4, Burst: 8, OneByOneFree: 4, BurstFree: 0, Worse: 2}},
		{without: true, want: burstFigures{OneByOne: 4, Burst: 4, OneByOneFree: 4, BurstFree: 4}},
	} {
		opts.WithoutBindingConditions = tc.without
		results, err := RunBurst(context.Background(), opts, BurstSchedulers[:1])
		if err != nil {
			t.Fatal(err)
		}
		if results[0].BindingConditions == tc.without {
			t.Errorf("without binding conditions %v: result says bindingConditions %v", tc.without, results[0].BindingConditions)
		}
		if diff := cmp.Diff(tc.want, figures(results[0])); diff != "" {
			t.Errorf("kube-scheduler, without binding conditions %v (-want +got):\n%s", tc.without, diff)
		}
	}
}

func TestBurstOptionErrors(t *testing.T) {
	for name, tc := range map[string]struct {
		opts BurstOptions
		want string
	}{
		"no free GPU":     {opts: BurstOptions{GPUs: 2, BusyGPUs: 2, Shares: 1, MemoryMinGiB: 1, MemoryMaxGiB: 1, ComputePercent: 1, Seeds: 1}, want: "busy GPUs 2"},
		"memory range":    {opts: BurstOptions{GPUs: 2, Shares: 1, MemoryMinGiB: 30, MemoryMaxGiB: 20, ComputePercent: 1, Seeds: 1}, want: "share memory 30-20Gi"},
		"above an H200":   {opts: BurstOptions{GPUs: 2, Shares: 1, MemoryMinGiB: 30, MemoryMaxGiB: 142, ComputePercent: 1, Seeds: 1}, want: "<= 141"},
		"every problem":   {opts: BurstOptions{}, want: "GPUs 0: want 1 to 8; busy GPUs 0"},
		"negative window": {opts: BurstOptions{GPUs: 2, Shares: 1, MemoryMinGiB: 1, MemoryMaxGiB: 1, ComputePercent: 1, Seeds: 1, Unwritten: -1}, want: "unwritten -1"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := RunBurst(context.Background(), tc.opts, BurstSchedulers)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestBurstCommand(t *testing.T) {
	cmd := NewCommand()
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs([]string{"burst", "--seeds", "1", "--schedulers", "tessera-scheduler"})
	if err := cmd.ExecuteContext(context.Background()); err != nil {
		t.Fatal(err)
	}
	var r BurstResult
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatalf("decode %q: %v", out.String(), err)
	}
	if r.Name != "tessera-scheduler" || r.Accounting != AccountingCountOnce || r.Seeds != 1 || len(r.PerSeed) != 1 {
		t.Errorf("result %+v, want tessera-scheduler's (count-once) of one seed", r)
	}
	if !strings.Contains(errOut.String(), "GPUs touched one by one 1, in bursts 1") {
		t.Errorf("summary %q lacks the GPUs touched", errOut.String())
	}

	cmd = NewCommand()
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs([]string{"burst", "--schedulers", "default-scheduler"})
	if err := cmd.ExecuteContext(context.Background()); err == nil || !strings.Contains(err.Error(), `unknown scheduler "default-scheduler"`) {
		t.Errorf("error %v, want the unknown scheduler named", err)
	}
}
