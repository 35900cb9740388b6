package scheduler

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"sync"
	"unique"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/runtime"
	draapi "k8s.io/dynamic-resource-allocation/api"
	"k8s.io/dynamic-resource-allocation/structured"
	"k8s.io/klog/v2"
	fwk "k8s.io/kube-scheduler/framework"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/pkg/partition"
	"github.com/tessera-gpu/tessera/pkg/placement"
)

// Name is the plugin's name in a KubeSchedulerConfiguration profile.
const Name = "TesseraPlacement"

// Args are the plugin's arguments (pluginConfig[].args).
type Args struct {
	// Workload is the request mix fragmentation is measured against; when
	// empty, DefaultWorkload.
	Workload []WorkloadClass `json:"workload,omitempty"`
}

// DefaultWorkload is the GPU-request mix of the GPU pods of Alibaba's openb
// trace (cluster-trace-gpu-v2023, 7,064 pods; weights are pod counts),
// without CPU and memory: a production mix of whole, multi-GPU and
// fractional requests, for clusters that do not describe their own.
var DefaultWorkload = []WorkloadClass{
	{GPUs: 1, GPUMilli: 1000, Weight: 3911}, {GPUs: 1, GPUMilli: 810, Weight: 1078}, {GPUs: 1, GPUMilli: 470, Weight: 750},
	{GPUs: 1, GPUMilli: 320, Weight: 328}, {GPUs: 1, GPUMilli: 650, Weight: 253}, {GPUs: 1, GPUMilli: 230, Weight: 140},
	{GPUs: 1, GPUMilli: 460, Weight: 128}, {GPUs: 1, GPUMilli: 590, Weight: 75}, {GPUs: 1, GPUMilli: 160, Weight: 74},
	{GPUs: 1, GPUMilli: 550, Weight: 72}, {GPUs: 1, GPUMilli: 220, Weight: 62}, {GPUs: 1, GPUMilli: 370, Weight: 47},
	{GPUs: 8, GPUMilli: 1000, Weight: 44}, {GPUs: 1, GPUMilli: 110, Weight: 24}, {GPUs: 1, GPUMilli: 480, Weight: 19},
	{GPUs: 2, GPUMilli: 1000, Weight: 16}, {GPUs: 4, GPUMilli: 1000, Weight: 15}, {GPUs: 1, GPUMilli: 50, Weight: 7},
	{GPUs: 1, GPUMilli: 330, Weight: 7}, {GPUs: 1, GPUMilli: 350, Weight: 6}, {GPUs: 1, GPUMilli: 270, Weight: 4},
	{GPUs: 1, GPUMilli: 440, Weight: 2}, {GPUs: 1, GPUMilli: 290, Weight: 1}, {GPUs: 1, GPUMilli: 140, Weight: 1},
}

// WorkloadClass is one kind of request and its share of the workload.
type WorkloadClass struct {
	CPUMilli  int64   `json:"cpuMilli"`
	MemoryMiB int64   `json:"memoryMiB"`
	GPUs      int     `json:"gpus"`
	GPUMilli  int     `json:"gpuMilli"`
	Weight    float64 `json:"weight"`
}

// Plugin scores nodes by the change of GPU fragmentation a pod's claim
// causes, assuming the GPU the allocator chooses inside the node: its first
// fit, or tessera-scheduler's placement choice for MIG (WithPlacementChoice).
type Plugin struct {
	dra      DRAState
	workload placement.Workload
	index    sliceIndex
	// cached keeps each node's fragmentation between pods (cache.go).
	cached bool
	// choice models MIGPlacementOrder's choice of partition (mig.go);
	// nil models first fit.
	choice placeRule
	// memo keeps MIG placements across nodes of one layout (memo.go); nil
	// without it.
	memo *placeMemo
	// demand, when set, learns what the pods ask for (PreFilter), and the
	// choice is modelled with its weights (WithDemand).
	demand *Demand
	seen   seenPods
}

// Option changes how NewWithState builds the plugin.
type Option func(*Plugin)

// WithoutFragmentationCache recomputes every node's fragmentation for every
// pod, as the plugin did before it cached it: the benchmark's baseline.
func WithoutFragmentationCache() Option { return func(p *Plugin) { p.cached = false } }

// WithoutPlacementMemo works out every MIG placement the score models on
// every node that misses its fragmentation cache, as the plugin did before
// it kept them across nodes of one layout: the benchmark's baseline.
func WithoutPlacementMemo() Option { return func(p *Plugin) { p.memo = nil } }

// WithPlacementChoice models the placement the allocator takes for a MIG
// request of one partition when MIGPlacementOrder is registered with it
// (tessera-scheduler built with the patched allocator) instead of its first
// fit, so that a node's score describes the partition the choice takes.
func WithPlacementChoice() Option { return func(p *Plugin) { p.choice = bestFit } }

// WithDemand has the plugin tell d what each pod asks for, once per pod, at
// PreFilter, before the allocator runs for it, and model the placement
// choice with d's weights: tessera-scheduler registers
// MIGPlacementOrderFor(d) with its allocator and the plugin with the same d,
// so that the two weigh alike.
func WithDemand(d *Demand) Option { return func(p *Plugin) { p.demand = d } }

// sliceIndex keeps the device index of the last list of slices: slices
// change rarely, and indexing every device of the cluster again for every
// pod was most of the plugin's cost.
type sliceIndex struct {
	mu     sync.Mutex
	slices map[*resourceapi.ResourceSlice]bool
	byNode map[string]*nodeGPUs
	// byPool finds a device's node by its pool (Tessera's pools are
	// node-local), for allocatedByNode.
	byPool map[draapi.UniqueString]*nodeGPUs
	// layouts are what the MIG model works out of each layout of the
	// indexed nodes with MIG partitions, once for all nodes of the layout.
	layouts map[unique.Handle[string]]layoutModel
}

// layoutModel is what the MIG model works out of a node's layout alone:
// its devices numbered for partition.BestFit, its counter sets' capacity so
// numbered, and its GPUs' shapes (gpuShapes). Read-only.
type layoutModel struct {
	prepared *partition.Prepared
	capacity partition.Left
	shapes   []int
}

// get returns the index of the slices by node and by pool, rebuilt only
// when the listed slice objects differ from last time (the informer
// replaces an object when it changes, so identity is enough), and then
// only for the nodes whose slices changed: a node listed with the same
// slices in the same order keeps its index, and with it its cached
// fragmentation (cache.go). A node's index is read-only once built.
func (c *sliceIndex) get(list []*resourceapi.ResourceSlice) (byNode map[string]*nodeGPUs, byPool map[draapi.UniqueString]*nodeGPUs) {
	c.mu.Lock()
	defer c.mu.Unlock()
	same := c.byNode != nil && len(list) == len(c.slices)
	for i := 0; same && i < len(list); i++ {
		same = c.slices[list[i]]
	}
	if same {
		return c.byNode, c.byPool
	}
	perNode := map[string][]*resourceapi.ResourceSlice{}
	c.slices = make(map[*resourceapi.ResourceSlice]bool, len(list))
	for _, s := range list {
		c.slices[s] = true
		if s.Spec.Driver == gpuapi.DriverName && s.Spec.NodeName != nil {
			perNode[*s.Spec.NodeName] = append(perNode[*s.Spec.NodeName], s)
		}
	}
	byNode = make(map[string]*nodeGPUs, len(perNode))
	byPool = make(map[draapi.UniqueString]*nodeGPUs, len(perNode))
	layouts := make(map[unique.Handle[string]]layoutModel, len(c.layouts))
	for name, own := range perNode {
		n := c.byNode[name]
		if n == nil || !slices.Equal(n.from, own) {
			n = gpusByNode(own)[name]
			n.from = own
			n.locate()
			if len(n.mig) > 0 {
				// With the index, not on the first MIG pod: each costs
				// about as much as ranking the node's partitions once.
				layout := n.layout()
				m, ok := layouts[layout]
				if !ok {
					m, ok = c.layouts[layout]
				}
				if !ok {
					p := partition.Prepare(n.choices)
					m = layoutModel{prepared: p, capacity: p.Left(n.counters), shapes: n.gpuShapes()}
				}
				n.prepared, n.capacity, n.shapes = m.prepared, m.capacity, m.shapes
			}
		}
		if n.prepared != nil {
			layouts[n.layout()] = layoutModel{prepared: n.prepared, capacity: n.capacity, shapes: n.shapes}
		}
		byNode[name] = n
		for _, s := range own {
			byPool[draapi.MakeUniqueString(s.Spec.Pool.Name)] = n
		}
	}
	c.byNode, c.byPool, c.layouts = byNode, byPool, layouts
	return byNode, byPool
}

var (
	_ fwk.PreScorePlugin  = &Plugin{}
	_ fwk.ScorePlugin     = &Plugin{}
	_ fwk.ScoreExtensions = &Plugin{}
)

// New is the plugin factory for app.WithPlugin.
func New(ctx context.Context, obj runtime.Object, h fwk.Handle) (fwk.Plugin, error) {
	return NewFactory()(ctx, obj, h)
}

// NewFactory is a plugin factory for app.WithPlugin whose plugins take the
// options.
func NewFactory(opts ...Option) func(context.Context, runtime.Object, fwk.Handle) (fwk.Plugin, error) {
	return func(_ context.Context, obj runtime.Object, h fwk.Handle) (fwk.Plugin, error) {
		args, err := decodeArgs(obj)
		if err != nil {
			return nil, err
		}
		return NewWithState(args, handleState{h.SharedDRAManager()}, opts...)
	}
}

// NewWithState returns the plugin over the given DRA state.
func NewWithState(args Args, dra DRAState, opts ...Option) (*Plugin, error) {
	p := &Plugin{dra: dra, cached: true, memo: newPlaceMemo()}
	for _, o := range opts {
		o(p)
	}
	classes := args.Workload
	if len(classes) == 0 {
		classes = DefaultWorkload
	}
	total := 0.0
	for i, c := range classes {
		if c.Weight <= 0 || c.GPUs < 0 || c.GPUs > 0 && (c.GPUMilli <= 0 || c.GPUMilli > placement.WholeGPU) {
			return nil, fmt.Errorf("%s args: workload[%d]: need weight > 0 and gpuMilli in 1..1000 for GPU requests", Name, i)
		}
		total += c.Weight
		p.workload.Classes = append(p.workload.Classes, placement.Class{Weight: c.Weight, Request: placement.Request{
			CPU: c.CPUMilli, Memory: c.MemoryMiB, GPUs: c.GPUs, Milli: c.GPUMilli,
		}})
	}
	for i := range p.workload.Classes {
		p.workload.Classes[i].Weight /= total
	}
	return p, nil
}

func decodeArgs(obj runtime.Object) (Args, error) {
	var args Args
	switch o := obj.(type) {
	case nil:
	case *runtime.Unknown:
		if len(o.Raw) > 0 {
			if err := json.Unmarshal(o.Raw, &args); err != nil {
				return args, fmt.Errorf("decode %s args: %w", Name, err)
			}
		}
	default:
		return args, fmt.Errorf("decode %s args: unexpected type %T", Name, obj)
	}
	return args, nil
}

// Name implements fwk.Plugin.
func (p *Plugin) Name() string { return Name }

const stateKey fwk.StateKey = Name

type cycleState struct {
	request placement.Request
	mig     migRequest
	// choice is the plugin's model of the placement choice with the
	// demand's weights as the allocator read them for this pod, and
	// weights their version (0 for first fit or no demand).
	choice   placeRule
	weights  uint64
	workload placement.Workload
	gpus     map[string]*nodeGPUs
	// allocated is the allocated state sorted by node (allocatedByNode).
	allocated map[*nodeGPUs]*nodeAllocated
}

func (s *cycleState) Clone() fwk.StateData { return s }

// PreScore gathers, once per pod, the pod's request, the workload and the
// DRA state the node scores read.
func (p *Plugin) PreScore(ctx context.Context, state fwk.CycleState, pod *corev1.Pod, _ []fwk.NodeInfo) *fwk.Status {
	r, mig, ok, err := podRequest(pod, p.dra)
	if err != nil {
		return fwk.AsStatus(err)
	}
	if !ok {
		return fwk.NewStatus(fwk.Skip)
	}
	slices, err := p.dra.Slices()
	if err != nil {
		return fwk.AsStatus(fmt.Errorf("list ResourceSlices: %w", err))
	}
	allocated, err := p.dra.Allocated()
	if err != nil {
		return fwk.AsStatus(fmt.Errorf("gather allocated devices: %w", err))
	}
	gpus, pools := p.index.get(slices)
	s := &cycleState{request: r, mig: mig, workload: p.workload, gpus: gpus, allocated: allocatedByNode(pools, allocated), choice: p.choice}
	if w := p.demand.Weights(); p.choice != nil && w.Version != 0 {
		s.choice, s.weights = weightedBestFit(w), w.Version
	}
	state.Write(stateKey, s)
	klog.FromContext(ctx).V(5).Info("Scoring GPU fragmentation", "pod", klog.KObj(pod), "request", r, "migProfile", mig.profile, "migCount", mig.count)
	return nil
}

// PreFilter implements fwk.PreFilterPlugin: with WithDemand it tells the
// demand what the pod asks for, the first time the pod is seen, so that the
// allocator, which runs after it, and Score weigh the classes by the
// requests so far, this one included. It never rejects a pod: a pod whose
// claims cannot be read yet is counted when they can.
func (p *Plugin) PreFilter(ctx context.Context, _ fwk.CycleState, pod *corev1.Pod, _ []fwk.NodeInfo) (*fwk.PreFilterResult, *fwk.Status) {
	if p.demand == nil || !p.seen.first(pod.UID) {
		return nil, fwk.NewStatus(fwk.Skip)
	}
	version := p.demand.Weights().Version
	defer func() {
		if w := p.demand.Weights(); w.Version != version {
			klog.FromContext(ctx).V(2).Info("Placement choice weighs the device classes by their demand", "version", w.Version, "weights", w.Classes(), "pod", klog.KObj(pod))
		}
	}()
	asked, err := podDemand(pod, p.dra)
	if err != nil {
		p.seen.forget(pod.UID)
	}
	for _, a := range asked {
		p.demand.Observe(a.class, a.n)
	}
	return nil, fwk.NewStatus(fwk.Skip)
}

// PreFilterExtensions implements fwk.PreFilterPlugin: none.
func (p *Plugin) PreFilterExtensions() fwk.PreFilterExtensions { return nil }

// worstDelta stands for a node where the model sees no room although the
// filter passed it (a claim the model cannot read exactly).
const worstDelta = 1e6

// scoreUnit is the change of fragmentation, in milli-GPUs, that one unit of
// the raw score stands for: fine, so that rounding it changes no choice.
const scoreUnit = 0.01

// Score implements fwk.ScorePlugin: the raw score is the fragmentation
// delta in units of scoreUnit, lower being better; NormalizeScore turns it
// around.
func (p *Plugin) Score(_ context.Context, state fwk.CycleState, _ *corev1.Pod, nodeInfo fwk.NodeInfo) (int64, *fwk.Status) {
	data, err := state.Read(stateKey)
	if err != nil {
		return 0, fwk.AsStatus(fmt.Errorf("read %s state: %w", Name, err))
	}
	s := data.(*cycleState)
	node := nodeInfo.Node()
	alloc, req := nodeInfo.GetAllocatable(), nodeInfo.GetRequested()
	cpu, memory := alloc.GetMilliCPU()-req.GetMilliCPU(), (alloc.GetMemory()-req.GetMemory())>>20
	g := s.gpus[node.Name]
	if g == nil {
		// No Tessera GPUs: nothing to fragment, and nothing to cache.
		g = &nodeGPUs{}
	}
	delta, ok := p.delta(g, s, cpu, memory)
	if !ok {
		delta = worstDelta
	}
	return int64(math.Round(delta / scoreUnit)), nil
}

// ScoreExtensions implements fwk.ScorePlugin.
func (p *Plugin) ScoreExtensions() fwk.ScoreExtensions { return p }

// NormalizeScore implements fwk.ScoreExtensions with placement.Normalize:
// among the nodes whose delta is within placement.Tolerance of the least,
// the node order (placement.NodeOrder of the node's name) decides.
func (p *Plugin) NormalizeScore(_ context.Context, _ fwk.CycleState, _ *corev1.Pod, scores fwk.NodeScoreList) *fwk.Status {
	deltas := make([]float64, len(scores))
	order := make([]int64, len(scores))
	for i, s := range scores {
		deltas[i] = float64(s.Score) * scoreUnit
		order[i] = placement.NodeOrder(s.Name, 0)
	}
	for i, s := range placement.Normalize(deltas, order, placement.Tolerance) {
		scores[i].Score = s
	}
	return nil
}

// handleState reads the DRA state from the scheduler's SharedDRAManager.
type handleState struct{ m fwk.SharedDRAManager }

func (h handleState) Slices() ([]*resourceapi.ResourceSlice, error) {
	return h.m.ResourceSlices().ListWithDeviceTaintRules()
}

func (h handleState) Claim(namespace, name string) (*resourceapi.ResourceClaim, error) {
	return h.m.ResourceClaims().Get(namespace, name)
}

func (h handleState) Allocated() (*structured.AllocatedState, error) {
	return h.m.ResourceClaims().GatherAllocatedState()
}
