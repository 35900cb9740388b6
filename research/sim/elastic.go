package sim

import (
	"math"
	"strconv"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/types"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/pkg/placement"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

// tenants are the simulated GPUTenants. Everything is counted in the unit of
// budgets, held GPU memory, priced by tenancy.Cost. The tenants share GPUs
// with each other (sharing Any), as the trace mode's pods do: under
// Exclusive a share would cost its whole GPU and keep the other tenants off
// it, which would change placement too, and is not modelled here.
type tenants struct {
	n int
	// guarantee and limit are each tenant's, in bytes of held GPU memory.
	guarantee, limit int64
	// used is what each tenant's running and terminating pods cost;
	// terminating what its pods being evicted cost.
	used, terminating []int64
	objects           []*tenancyv1.GPUTenant
	fleet             *Fleet
	costs             map[costKey]int64
	// memories are the GPU memory sizes of the fleet per GPU model.
	memories map[string]int64
}

type costKey struct {
	r      placement.Request
	memory int64
}

// newTenants gives each of opts.Tenants an equal guarantee, the fleet's GPU
// memory divided among them (so the guarantees add up to at most the
// fleet), and a budget: the guarantee when hard, opts.ElasticBudget of the
// fleet when elastic (never below the guarantee).
func newTenants(fleet *Fleet, opts TimelineOptions) *tenants {
	ts := &tenants{n: max(opts.Tenants, 1), fleet: fleet, costs: map[costKey]int64{}, memories: map[string]int64{}}
	total := fleet.totalMemory()
	for i, s := range fleet.Specs {
		if s.GPUs > 0 {
			ts.memories[s.Model] = int64(fleet.memory[i])
		}
	}
	ts.guarantee = total / int64(ts.n)
	ts.limit = ts.guarantee
	if opts.Budgets == BudgetsElastic {
		ts.limit = max(ts.guarantee, int64(opts.ElasticBudget*float64(total)))
	}
	ts.used = make([]int64, ts.n)
	ts.terminating = make([]int64, ts.n)
	for k := range ts.n {
		ts.objects = append(ts.objects, &tenancyv1.GPUTenant{Spec: tenancyv1.GPUTenantSpec{Sharing: tenancyv1.SharingAny}})
		ts.objects[k].Name = tenantName(k)
	}
	return ts
}

func tenantName(k int) string { return "tenant-" + strconv.Itoa(k) }

// effective is what the tenant holds once its pods being evicted are gone.
func (ts *tenants) effective(k int) int64 { return ts.used[k] - ts.terminating[k] }

// mayHold reports whether the tenant may add cost within its budget.
func (ts *tenants) mayHold(k int, cost int64) bool { return ts.used[k]+cost <= ts.limit }

// cost is what the pod costs its tenant on the node: tenancy.Cost of the
// devices its claim (Fleet.claim) gets there.
func (ts *tenants) cost(p Pod, node int) int64 {
	return ts.costOn(p.Request, int64(ts.fleet.memory[node]))
}

func (ts *tenants) costOn(r placement.Request, memory int64) int64 {
	if r.GPUs == 0 {
		return 0
	}
	key := costKey{r, memory}
	if c, ok := ts.costs[key]; ok {
		return c
	}
	var held []tenancy.Holding
	if r.Shared() {
		consumed := map[resourceapi.QualifiedName]resource.Quantity{
			gpuapi.CapMemory:  *resource.NewQuantity(shareMemory(memory, r.Milli), resource.BinarySI),
			gpuapi.CapCompute: *resource.NewQuantity(int64(r.Milli/10), resource.DecimalSI),
		}
		held = append(held, tenancy.Holding{
			Device: tenancy.DeviceID{Driver: gpuapi.DriverName, Device: gpuapi.SharedDeviceName(0)}, Class: gpuapi.ClassShared,
			Memory: tenancy.DominantMemory(consumed, memory), SharedGPUMemory: memory,
		})
	} else {
		for g := range r.GPUs {
			held = append(held, tenancy.Holding{
				Device: tenancy.DeviceID{Driver: gpuapi.DriverName, Device: gpuapi.WholeDeviceName(g)}, Class: gpuapi.ClassGPU, Memory: memory,
			})
		}
	}
	c := tenancy.Cost(ts.objects[0], held).Memory
	ts.costs[key] = c
	return c
}

// shareMemory is the memory a share's claim asks for (Fleet.claim): in
// proportion to its compute, rounded down to the request policy's step.
func shareMemory(gpuMemory int64, milli int) int64 {
	return max(gpuMemory*int64(milli)/placement.WholeGPU/shareMemoryStep*shareMemoryStep, shareMemoryStep)
}

// leastCost is the least the pod can cost on a GPU model it may use: what
// decides whether its tenant is owed it before a node is chosen.
func (ts *tenants) leastCost(p Pod) int64 {
	least := int64(-1)
	for model, memory := range ts.memories {
		if !modelAllows(p, NodeSpec{Model: model}) {
			continue
		}
		if c := ts.costOn(p.Request, memory); least < 0 || c < least {
			least = c
		}
	}
	return max(least, 0)
}

// reclaimPlan is one way to make room for a pod: victims on one node.
type reclaimPlan struct {
	node    int
	victims []int
	// top is the highest priority among the victims, first when they
	// started the earliest, cost what they cost.
	top   int32
	first time.Time
	cost  int64
}

// better orders plans as ChooseVictims orders victims: fewer victims, then
// lower priorities, then more recently started, then less evicted cost.
func (a reclaimPlan) better(b reclaimPlan) bool {
	switch {
	case b.node < 0:
		return true
	case len(a.victims) != len(b.victims):
		return len(a.victims) < len(b.victims)
	case a.top != b.top:
		return a.top < b.top
	case !a.first.Equal(b.first):
		return a.first.After(b.first)
	}
	return a.cost < b.cost
}

// reclaim makes room for an owed pending pod by evicting borrowed pods, the
// way the controller decides: per node, the candidates are the running pods
// there of tenants above their guarantee, and tenancy.ChooseVictimsToFit
// takes them in reclaim order until the node's model fits the pod (GPUs,
// CPU and memory), then drops those it fits without. Of the nodes, the plan
// with the fewest victims, then the lowest priorities, then the most
// recently started, then the least evicted cost, then the first node, is
// carried out. Nothing is evicted when the devices already being freed make
// room, or when no plan fits.
func (tl *timeline) reclaim(i int, t float64) {
	p := &tl.sim[i]
	p.reclaimAt = t + max(tl.opts.ReclaimInterval, tl.opts.ReclaimDelay)
	pod := tl.pods[i].Pod
	r := tl.sched.request(pod)
	if r.GPUs == 0 {
		return
	}
	ts := tl.tenants
	holdings := make(map[string]tenancy.TenantHolding, ts.n)
	borrowing := make([]bool, ts.n)
	for k := range ts.n {
		holdings[tenantName(k)] = tenancy.TenantHolding{Used: tenancy.Usage{Memory: ts.effective(k)}, Guarantee: tenancy.Usage{Memory: ts.guarantee}}
		borrowing[k] = ts.effective(k) > ts.guarantee
	}
	best := reclaimPlan{node: -1}
	var cands []tenancy.RunningClaim
	for n, spec := range tl.fleet.Specs {
		if spec.GPUs < r.GPUs || !modelAllows(pod, spec) {
			continue
		}
		free := tl.sched.states[n].node
		var mine []int
		for _, j := range tl.onNode[n] {
			q := &tl.sim[j]
			switch {
			case q.state == stateTerminating:
				free = without(free, tl.sched.request(tl.pods[j].Pod), q.gpus)
			case q.tenant != p.tenant && borrowing[q.tenant]:
				mine = append(mine, j)
			}
		}
		if free.Fits(r) {
			return
		}
		if len(mine) == 0 {
			continue
		}
		cands = cands[:0]
		for _, j := range mine {
			cands = append(cands, tl.runningClaim(j))
		}
		fits := func(victims []tenancy.RunningClaim) bool {
			after := free
			for _, v := range victims {
				j, _ := strconv.Atoi(v.Claim.Name)
				after = without(after, tl.sched.request(tl.pods[j].Pod), tl.sim[j].gpus)
			}
			return after.Fits(r)
		}
		victims, ok := tenancy.ChooseVictimsToFit(cands, holdings, tenantName(p.tenant), fits)
		if !ok || len(victims) == 0 {
			continue
		}
		plan := reclaimPlan{node: n, top: math.MinInt32}
		for _, v := range victims {
			j, _ := strconv.Atoi(v.Claim.Name)
			plan.victims = append(plan.victims, j)
			plan.cost += v.Cost.Memory
			plan.top = max(plan.top, v.Priority)
			if plan.first.IsZero() || v.Started.Before(plan.first) {
				plan.first = v.Started
			}
		}
		if plan.better(best) {
			best = plan
		}
	}
	for _, j := range best.victims {
		tl.evict(j, t)
	}
}

func (tl *timeline) runningClaim(j int) tenancy.RunningClaim {
	q := &tl.sim[j]
	return tenancy.RunningClaim{
		Claim:    types.NamespacedName{Namespace: tenantName(q.tenant), Name: strconv.Itoa(j)},
		Tenant:   tenantName(q.tenant),
		Priority: tl.pods[j].Priority,
		Started:  time.Unix(0, 0).Add(time.Duration(q.since * float64(time.Second))),
		Cost:     tenancy.Usage{Memory: q.cost},
	}
}

// totalMemory is the GPU memory of the whole fleet, in bytes.
func (f *Fleet) totalMemory() int64 {
	var total int64
	for i, s := range f.Specs {
		total += int64(s.GPUs) * int64(f.memory[i])
	}
	return total
}
