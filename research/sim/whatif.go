package sim

import (
	"context"
	"fmt"
	"sort"

	"github.com/tessera-gpu/tessera/pkg/placement"
)

// Sizing answers a platform engineer's what-if: does this workload fit this
// fleet under a policy, and how many of its GPUs does it need.
type Sizing struct {
	Policy Policy `json:"policy"`
	Pods   int    `json:"pods"`
	// PodsPlaced and PodsFailed are for the whole fleet, pods placed in file
	// order.
	PodsPlaced int `json:"podsPlaced"`
	PodsFailed int `json:"podsFailed"`
	// DemandGPUs is what the pods ask for, in GPUs.
	DemandGPUs float64 `json:"demandGPUs"`
	FleetGPUs  int64   `json:"fleetGPUs"`
	// GPUsInUse are GPUs with at least one allocation after placing every
	// pod on the whole fleet.
	GPUsInUse int `json:"gpusInUse"`
	// GPUsNeeded is the GPUs of the fewest nodes, taken in file order, on
	// which every pod is placed; -1 when the whole fleet is not enough.
	GPUsNeeded  int64 `json:"gpusNeeded"`
	NodesNeeded int   `json:"nodesNeeded"`
}

// Size places the pods, in order, on the fleet under the policy, then finds
// by bisection the shortest prefix of the node list that places as many.
func Size(ctx context.Context, nodes []NodeSpec, pods []Pod, policy Policy, weight int64) (Sizing, error) {
	out := Sizing{Policy: policy, Pods: len(pods)}
	for _, p := range pods {
		out.DemandGPUs += float64(p.Request.Demand()) / placement.WholeGPU
	}
	full := NewFleet(nodes)
	out.FleetGPUs = full.Capacity / placement.WholeGPU
	sched, failed, err := placeInOrder(ctx, full, pods, policy, weight)
	if err != nil {
		return out, err
	}
	out.PodsFailed = failed
	out.PodsPlaced = len(pods) - failed
	for _, st := range sched.states {
		for _, f := range st.node.Free {
			if f < placement.WholeGPU {
				out.GPUsInUse++
			}
		}
	}
	var errSearch error
	n := sort.Search(len(nodes), func(k int) bool {
		if errSearch != nil || k == 0 {
			return false
		}
		_, failedOnPrefix, err := placeInOrder(ctx, NewFleet(nodes[:k]), pods, policy, weight)
		errSearch = err
		return err == nil && failedOnPrefix <= failed
	})
	if errSearch != nil {
		return out, errSearch
	}
	out.NodesNeeded = n
	out.GPUsNeeded = NewFleet(nodes[:n]).Capacity / placement.WholeGPU
	return out, nil
}

func placeInOrder(ctx context.Context, fleet *Fleet, pods []Pod, policy Policy, weight int64) (*Scheduler, int, error) {
	workload, err := workloadOf(pods, fleet)
	if err != nil {
		return nil, 0, fmt.Errorf("what-if: %w", err)
	}
	sched := newScheduler(fleet, workload, Options{Policy: policy, Weight: weight}, 1)
	failed := 0
	for uid, pod := range pods {
		ok, err := place(ctx, fleet, sched, pod, uid, nil)
		if err != nil {
			return nil, 0, fmt.Errorf("what-if: %w", err)
		}
		if !ok {
			failed++
		}
	}
	return sched, failed, nil
}
