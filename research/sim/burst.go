package sim

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/dynamic-resource-allocation/cel"
	"k8s.io/dynamic-resource-allocation/structured"
	"k8s.io/utils/ptr"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	tnvml "github.com/tessera-gpu/tessera/internal/nvml"
	"github.com/tessera-gpu/tessera/internal/nvml/nvmlmock"
	"github.com/tessera-gpu/tessera/pkg/resourceslice"
	"github.com/tessera-gpu/tessera/research/scheduling"
)

// Accounting is how a scheduler's DynamicResources plugin adds up what the
// claims of a node consume when it gathers the allocated state for a pod.
type Accounting string

const (
	// AccountingDoubleCount is kube-scheduler 1.37.2's: a claim that is in
	// flight and that the claim cache already shows allocated adds its
	// consumed capacity twice (see claimTracker).
	AccountingDoubleCount Accounting = "double-count"
	// AccountingCountOnce is tessera-scheduler's
	// (research/patches/scheduler/count-once.patch): such a claim's consumed
	// capacity counts once when the cache shows the same device results.
	AccountingCountOnce Accounting = "count-once"
)

// BurstScheduler is a scheduler of the burst model. On the model's one
// node the placement policy chooses nothing (stock and tessera policies pick
// among nodes; under both the allocator takes the first GPU that fits), so
// the accounting alone tells the two schedulers apart.
type BurstScheduler struct {
	Name       string     `json:"scheduler"`
	Policy     Policy     `json:"policy"`
	Accounting Accounting `json:"accounting"`
}

// BurstSchedulers are the schedulers tessera-sim burst compares, in the order
// it reports them.
var BurstSchedulers = []BurstScheduler{
	{Name: "kube-scheduler", Policy: PolicyStock, Accounting: AccountingDoubleCount},
	{Name: "tessera-scheduler", Policy: PolicyTessera, Accounting: AccountingCountOnce},
}

// ParseBurstScheduler checks a scheduler name.
func ParseBurstScheduler(name string) (BurstScheduler, error) {
	var names []string
	for _, s := range BurstSchedulers {
		if s.Name == name {
			return s, nil
		}
		names = append(names, s.Name)
	}
	return BurstScheduler{}, fmt.Errorf("unknown scheduler %q (want one of %s)", name, strings.Join(names, ", "))
}

// claimTracker models the two sources from which the DynamicResources plugin
// of k8s.io/kubernetes v1.37.2 (pkg/scheduler/framework/plugins/dynamicresources)
// gathers what is allocated when it filters a pod:
//
//   - the claim cache (allocatedDevices, allocateddevices.go:95-240) holds the
//     devices, share IDs and consumed capacity of every claim the assume
//     cache shows allocated: from the informer, and from PreBind's own write
//     as soon as it returns (bindClaim, dynamicresources.go:1835-1847,
//     AssumeClaimAfterAPICall);
//   - the in-flight claims: Reserve signals each allocation it made
//     (dynamicresources.go:1564, SignalClaimPendingAllocation), and only a
//     successful PreBind's deferred cleanup removes it
//     (dynamicresources.go:1689-1692 and 1853-1870), after PreBind's wait for
//     the binding conditions (dynamicresources.go:1726-1729: a poll every 5 s).
//
// GatherAllocatedState (dra_manager.go:367-431) starts from the cache and
// adds every in-flight claim (lines 403-420, through foreachAllocatedDevice,
// allocateddevices.go:41-82). Devices and share IDs go into sets, so a claim
// in both counts once there; consumed capacity goes through
// ConsumedCapacityCollection.Insert, which sums (k8s.io/dynamic-resource-allocation
// v0.37.2, structured/schedulerapi/types.go:168-175). So a share whose
// allocation is written while its pod still waits in PreBind consumes its
// memory and compute twice. count-once.patch skips the in-flight capacity of
// a claim the cache shows with the same device results.
type claimTracker struct {
	cache    map[types.UID][]resourceapi.DeviceRequestAllocationResult
	inFlight map[types.UID][]resourceapi.DeviceRequestAllocationResult
}

func newClaimTracker() *claimTracker {
	return &claimTracker{
		cache:    map[types.UID][]resourceapi.DeviceRequestAllocationResult{},
		inFlight: map[types.UID][]resourceapi.DeviceRequestAllocationResult{},
	}
}

func (c *claimTracker) clone() *claimTracker {
	out := newClaimTracker()
	for uid, r := range c.cache {
		out.cache[uid] = r
	}
	for uid, r := range c.inFlight {
		out.inFlight[uid] = r
	}
	return out
}

// gather is GatherAllocatedState under the accounting.
func (c *claimTracker) gather(acct Accounting) structured.AllocatedState {
	s := structured.AllocatedState{
		AllocatedDevices:         sets.New[structured.DeviceID](),
		AllocatedSharedDeviceIDs: sets.New[structured.SharedDeviceID](),
		AggregatedCapacity:       structured.NewConsumedCapacityCollection(),
	}
	add := func(results []resourceapi.DeviceRequestAllocationResult, capacity bool) {
		for _, r := range results {
			if ptr.Deref(r.AdminAccess, false) {
				continue
			}
			id := structured.MakeDeviceID(r.Driver, r.Pool, r.Device)
			if r.ShareID == nil {
				s.AllocatedDevices.Insert(id)
				continue
			}
			s.AllocatedSharedDeviceIDs.Insert(structured.MakeSharedDeviceID(id, r.ShareID))
			if capacity && r.ConsumedCapacity != nil {
				s.AggregatedCapacity.Insert(structured.NewDeviceConsumedCapacity(id, r.ConsumedCapacity))
			}
		}
	}
	for _, results := range c.cache {
		add(results, true)
	}
	for uid, results := range c.inFlight {
		cached, inCache := c.cache[uid]
		countedOnce := acct == AccountingCountOnce && inCache && apiequality.Semantic.DeepEqual(cached, results)
		add(results, !countedOnce)
	}
	return s
}

// BurstOptions describe the node, the shares and the seeds of a burst run.
type BurstOptions struct {
	// GPUs is the node's H200 GPUs (go-nvml's dgxh200 mock, as the local
	// cluster's tenancy node), every device with the tenancy controller's
	// binding condition unless WithoutBindingConditions.
	GPUs int
	// WithoutBindingConditions publishes the devices as a node without
	// tenancy does: PreBind then returns as soon as a pod's allocation is
	// written, and its deferred cleanup takes the claim out of flight at
	// once (dynamicresources.go:1689-1692 and 1714-1719), so no share is in
	// flight and written at the same time.
	WithoutBindingConditions bool
	// BusyGPUs are taken by whole-GPU claims before the shares come.
	BusyGPUs int
	// Shares per seed, each of a memory drawn from MemoryMinGiB to
	// MemoryMaxGiB and of ComputePercent.
	Shares                     int
	MemoryMinGiB, MemoryMaxGiB int64
	ComputePercent             int64
	// Seeds is the number of seeded sets of shares; seed i draws the sizes
	// as the e2e's TestShareBurstPacksLikeOneByOne does for seed i.
	Seeds int
	// Unwritten is how many of the pods placed just before a pod of the
	// burst have not yet written their allocation (their PreBind's API call
	// is still under way) when it is filtered. 0 is a burst whose every pod
	// has written its allocation and waits on its binding condition before
	// the next is filtered; Shares or more is a burst filtered before any
	// write lands.
	Unwritten int
}

// DefaultBurstOptions are the e2e's setup: four shares of 25 to 34Gi,
// compute 10 %, on a node of two H200s with the binding condition, 10 seeds.
func DefaultBurstOptions() BurstOptions {
	return BurstOptions{GPUs: 2, Shares: 4, MemoryMinGiB: 25, MemoryMaxGiB: 34, ComputePercent: 10, Seeds: 10}
}

// h200MemoryGiB is the framebuffer of go-nvml's H200 mock (144384 MiB).
const h200MemoryGiB = 141

// Validate returns every problem with the options.
func (o BurstOptions) Validate() error {
	var errs []string
	if o.GPUs < 1 || o.GPUs > 8 {
		errs = append(errs, fmt.Sprintf("GPUs %d: want 1 to 8", o.GPUs))
	}
	if o.BusyGPUs < 0 || o.BusyGPUs >= o.GPUs {
		errs = append(errs, fmt.Sprintf("busy GPUs %d: want 0 to GPUs-1 (%d)", o.BusyGPUs, o.GPUs-1))
	}
	if o.Shares < 1 || o.Shares > 64 {
		errs = append(errs, fmt.Sprintf("shares %d: want 1 to 64", o.Shares))
	}
	if o.MemoryMinGiB < 1 || o.MemoryMaxGiB < o.MemoryMinGiB || o.MemoryMaxGiB > h200MemoryGiB {
		errs = append(errs, fmt.Sprintf("share memory %d-%dGi: want 1 <= min <= max <= %d", o.MemoryMinGiB, o.MemoryMaxGiB, h200MemoryGiB))
	}
	if o.ComputePercent < 1 || o.ComputePercent > 100 {
		errs = append(errs, fmt.Sprintf("compute %d %%: want 1 to 100", o.ComputePercent))
	}
	if o.Seeds < 1 || o.Seeds > 1000 {
		errs = append(errs, fmt.Sprintf("seeds %d: want 1 to 1000", o.Seeds))
	}
	if o.Unwritten < 0 {
		errs = append(errs, fmt.Sprintf("unwritten %d: want 0 or more", o.Unwritten))
	}
	if len(errs) > 0 {
		return fmt.Errorf("burst: %s", strings.Join(errs, "; "))
	}
	return nil
}

// BurstSeed is what one seed's shares did, one by one and in a burst.
type BurstSeed struct {
	Seed      int     `json:"seed"`
	MemoryGiB []int64 `json:"memoryGiB"`
	// OneByOneGPU and BurstGPU are the GPU index of each share, -1 for a
	// share that fits nowhere.
	OneByOneGPU []int `json:"oneByOneGPU"`
	BurstGPU    []int `json:"burstGPU"`
	// RetriedAfterBurst counts the burst's shares that fit nowhere while the
	// burst was in flight and were placed after its pods were bound.
	RetriedAfterBurst int `json:"retriedAfterBurst"`
	OneByOneTouched   int `json:"oneByOneGPUsTouched"`
	BurstTouched      int `json:"burstGPUsTouched"`
}

// BurstResult sums a scheduler's seeds.
type BurstResult struct {
	BurstScheduler
	Seeds     int `json:"seeds"`
	GPUs      int `json:"gpus"`
	BusyGPUs  int `json:"busyGPUs"`
	Shares    int `json:"shares"`
	Unwritten int `json:"unwritten"`
	// BindingConditions is whether the node's devices carry them.
	BindingConditions bool `json:"bindingConditions"`
	// GPUs touched by the shares and GPUs left free (neither busy nor
	// touched), summed over seeds.
	OneByOneGPUsTouched  int `json:"oneByOneGPUsTouched"`
	BurstGPUsTouched     int `json:"burstGPUsTouched"`
	OneByOneGPUsLeftFree int `json:"oneByOneGPUsLeftFree"`
	BurstGPUsLeftFree    int `json:"burstGPUsLeftFree"`
	// BurstsOnMoreGPUs counts the seeds whose burst touched more GPUs than
	// the same shares one by one.
	BurstsOnMoreGPUs  int `json:"burstsOnMoreGPUs"`
	RetriedAfterBurst int `json:"retriedAfterBurst"`
	// SharesUnplaced counts shares that fit nowhere, one by one or after a
	// burst.
	SharesUnplaced int         `json:"sharesUnplaced"`
	PerSeed        []BurstSeed `json:"perSeed"`
}

// burstNode is the node of a burst run: its slices as Tessera's kubelet
// plugin publishes them on the tenancy node, and the claims that keep its
// busy GPUs.
type burstNode struct {
	node   *corev1.Node
	slices []*resourceapi.ResourceSlice
	cel    *cel.Cache
	// gpu maps device names to GPU index.
	gpu  map[string]int
	busy *claimTracker
}

func newBurstNode(ctx context.Context, opts BurstOptions) (*burstNode, error) {
	server, err := nvmlmock.New("dgxh200", opts.GPUs, "burst")
	if err != nil {
		return nil, fmt.Errorf("start mock NVML: %w", err)
	}
	lib, err := tnvml.OpenMock(server)
	if err != nil {
		return nil, fmt.Errorf("open mock NVML: %w", err)
	}
	inv, err := lib.Discover(ctx)
	if err != nil {
		return nil, fmt.Errorf("discover mock GPUs: %w", err)
	}
	const name = "tenancy-node"
	sliceOpts := resourceslice.Options{Pool: "default"}
	if !opts.WithoutBindingConditions {
		sliceOpts.BindingConditions = []string{tenancyv1.ConditionAdmitted}
		sliceOpts.BindingFailureConditions = []string{tenancyv1.ConditionRejected}
	}
	n := &burstNode{
		node:   &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}},
		slices: resourceslice.Objects(name, resourceslice.Build(name, inv, sliceOpts)),
		cel:    cel.NewCache(100, cel.Features{EnableConsumableCapacity: true}),
		gpu:    map[string]int{},
	}
	for i, g := range inv.GPUs {
		n.gpu[gpuapi.WholeDeviceName(g.Minor)] = i
		n.gpu[gpuapi.SharedDeviceName(g.Minor)] = i
	}
	n.busy = newClaimTracker()
	for i := range opts.BusyGPUs {
		claim := burstClaim(fmt.Sprintf("busy-%d", i), resourceapi.ExactDeviceRequest{
			DeviceClassName: gpuapi.ClassGPU, AllocationMode: resourceapi.DeviceAllocationModeExactCount, Count: 1,
		})
		results, err := n.allocate(ctx, n.busy.gather(AccountingCountOnce), claim)
		if err != nil {
			return nil, err
		}
		if results == nil {
			return nil, fmt.Errorf("burst: whole GPU %d of %d does not fit", i+1, opts.BusyGPUs)
		}
		n.busy.cache[claim.UID] = results
	}
	return n, nil
}

func burstClaim(name string, req resourceapi.ExactDeviceRequest) *resourceapi.ResourceClaim {
	return &resourceapi.ResourceClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "burst", UID: types.UID(name)},
		Spec: resourceapi.ResourceClaimSpec{Devices: resourceapi.DeviceClaim{Requests: []resourceapi.DeviceRequest{
			{Name: "share", Exactly: &req},
		}}},
	}
}

// shareClaim is the e2e's claim: one share of the time-shared class.
func shareClaim(name string, memoryGiB, computePercent int64) *resourceapi.ResourceClaim {
	return burstClaim(name, resourceapi.ExactDeviceRequest{
		DeviceClassName: gpuapi.ClassShared, AllocationMode: resourceapi.DeviceAllocationModeExactCount, Count: 1,
		Capacity: &resourceapi.CapacityRequirements{Requests: map[resourceapi.QualifiedName]resource.Quantity{
			gpuapi.CapMemory:  *resource.NewQuantity(memoryGiB<<30, resource.BinarySI),
			gpuapi.CapCompute: *resource.NewQuantity(computePercent, resource.DecimalSI),
		}},
	})
}

// allocate runs kube-scheduler's allocator for the claim on the node with
// the gathered state; nil results when it finds no fit.
func (n *burstNode) allocate(ctx context.Context, state structured.AllocatedState, claim *resourceapi.ResourceClaim) ([]resourceapi.DeviceRequestAllocationResult, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	alloc, err := structured.NewAllocator(ctx, scheduling.Features, state, scheduling.Classes, n.slices, n.cel)
	if err != nil {
		return nil, fmt.Errorf("new allocator: %w", err)
	}
	results, err := alloc.Allocate(ctx, n.node, []*resourceapi.ResourceClaim{claim})
	if err != nil {
		return nil, fmt.Errorf("allocate %s: %w", claim.Name, err)
	}
	if len(results) == 0 {
		return nil, nil
	}
	return results[0].Devices.Results, nil
}

// gpuOf is the GPU of a share's results.
func (n *burstNode) gpuOf(results []resourceapi.DeviceRequestAllocationResult) (int, error) {
	if len(results) != 1 {
		return -1, fmt.Errorf("a share got %d devices, want 1", len(results))
	}
	g, ok := n.gpu[results[0].Device]
	if !ok {
		return -1, fmt.Errorf("a share got unknown device %s", results[0].Device)
	}
	return g, nil
}

// burstSizes draws a seed's share sizes exactly as the e2e's
// TestShareBurstPacksLikeOneByOne does (PCG seeded with the seed and 29).
func burstSizes(opts BurstOptions, seed int) []int64 {
	rng := rand.New(rand.NewPCG(uint64(seed), 29))
	out := make([]int64, opts.Shares)
	for i := range out {
		out[i] = opts.MemoryMinGiB + rng.Int64N(opts.MemoryMaxGiB-opts.MemoryMinGiB+1)
	}
	return out
}

// RunBurst places each seed's shares on the node one by one and in a burst,
// under each scheduler.
//
// One by one, each share is filtered after the one before is bound: the
// claim cache holds the earlier shares and nothing is in flight. In a burst,
// every share is filtered while the earlier shares of its burst wait in
// PreBind: each is in flight, and all but the opts.Unwritten placed last have
// also written their allocation to the claim cache. A share that fits
// nowhere then is placed, one by one, after every pod of the burst is bound:
// a simplification of kube-scheduler's retry of an unschedulable pod, which
// comes on a later event and may come while some of the burst still waits.
func RunBurst(ctx context.Context, opts BurstOptions, schedulers []BurstScheduler) ([]BurstResult, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	node, err := newBurstNode(ctx, opts)
	if err != nil {
		return nil, err
	}
	var out []BurstResult
	for _, sched := range schedulers {
		r := BurstResult{BurstScheduler: sched, Seeds: opts.Seeds, GPUs: opts.GPUs, BusyGPUs: opts.BusyGPUs,
			Shares: opts.Shares, Unwritten: opts.Unwritten, BindingConditions: !opts.WithoutBindingConditions}
		for seed := range opts.Seeds {
			if err := ctx.Err(); err != nil {
				return nil, fmt.Errorf("burst seed %d: %w", seed, err)
			}
			s, err := node.runSeed(ctx, opts, sched.Accounting, seed)
			if err != nil {
				return nil, fmt.Errorf("%s, burst seed %d: %w", sched.Name, seed, err)
			}
			r.PerSeed = append(r.PerSeed, s)
			free := opts.GPUs - opts.BusyGPUs
			r.OneByOneGPUsTouched += s.OneByOneTouched
			r.BurstGPUsTouched += s.BurstTouched
			r.OneByOneGPUsLeftFree += free - s.OneByOneTouched
			r.BurstGPUsLeftFree += free - s.BurstTouched
			if s.BurstTouched > s.OneByOneTouched {
				r.BurstsOnMoreGPUs++
			}
			r.RetriedAfterBurst += s.RetriedAfterBurst
			for i := range s.BurstGPU {
				if s.OneByOneGPU[i] < 0 {
					r.SharesUnplaced++
				}
				if s.BurstGPU[i] < 0 {
					r.SharesUnplaced++
				}
			}
		}
		out = append(out, r)
	}
	return out, nil
}

func (n *burstNode) runSeed(ctx context.Context, opts BurstOptions, acct Accounting, seed int) (BurstSeed, error) {
	sizes := burstSizes(opts, seed)
	s := BurstSeed{Seed: seed, MemoryGiB: sizes}
	claims := func(mode string) []*resourceapi.ResourceClaim {
		out := make([]*resourceapi.ResourceClaim, len(sizes))
		for i, m := range sizes {
			out[i] = shareClaim(fmt.Sprintf("%s-s%d-%d", mode, seed, i), m, opts.ComputePercent)
		}
		return out
	}
	// place allocates a claim with the tracker's state and writes it into
	// the cache, as a pod filtered, reserved and bound before the next.
	place := func(t *claimTracker, claim *resourceapi.ResourceClaim) (int, error) {
		results, err := n.allocate(ctx, t.gather(acct), claim)
		if err != nil || results == nil {
			return -1, err
		}
		t.cache[claim.UID] = results
		return n.gpuOf(results)
	}

	one := n.busy.clone()
	for _, claim := range claims("one") {
		g, err := place(one, claim)
		if err != nil {
			return s, err
		}
		s.OneByOneGPU = append(s.OneByOneGPU, g)
	}

	burst := n.busy.clone()
	var placed []*resourceapi.ResourceClaim
	var retry []int
	written := 0
	s.BurstGPU = make([]int, len(sizes))
	burstClaims := claims("burst")
	for i, claim := range burstClaims {
		for ; written < len(placed)-opts.Unwritten; written++ {
			uid := placed[written].UID
			burst.cache[uid] = burst.inFlight[uid]
			if opts.WithoutBindingConditions {
				// PreBind has nothing to wait for: bound.
				delete(burst.inFlight, uid)
			}
		}
		results, err := n.allocate(ctx, burst.gather(acct), claim)
		if err != nil {
			return s, err
		}
		if results == nil {
			retry = append(retry, i)
			s.BurstGPU[i] = -1
			continue
		}
		burst.inFlight[claim.UID] = results
		placed = append(placed, claim)
		if s.BurstGPU[i], err = n.gpuOf(results); err != nil {
			return s, err
		}
	}
	// Every pod of the burst is bound: its allocation is in the cache and
	// no longer in flight.
	for uid, results := range burst.inFlight {
		burst.cache[uid] = results
		delete(burst.inFlight, uid)
	}
	for _, i := range retry {
		g, err := place(burst, burstClaims[i])
		if err != nil {
			return s, err
		}
		s.BurstGPU[i] = g
		if g >= 0 {
			s.RetriedAfterBurst++
		}
	}
	s.OneByOneTouched = touched(s.OneByOneGPU)
	s.BurstTouched = touched(s.BurstGPU)
	return s, nil
}

func touched(gpus []int) int {
	seen := sets.New[int]()
	for _, g := range gpus {
		if g >= 0 {
			seen.Insert(g)
		}
	}
	return seen.Len()
}
