package sim

import (
	"context"
	"fmt"

	resourceapi "k8s.io/api/resource/v1"
)

// Mirror runs the stock-scheduler model beside a real scheduler, to check
// the model against it: for each pod, Best says which nodes the model would
// choose among, and Record applies what the real scheduler did so that the
// next choice starts from the same state.
type Mirror struct {
	fleet *Fleet
	sched *Scheduler
	uid   int
}

// NewMirror returns the model of the stock kube-scheduler on the nodes.
func NewMirror(nodes []NodeSpec, pods []Pod) (*Mirror, error) {
	fleet := NewFleet(nodes)
	workload, err := workloadOf(pods, fleet)
	if err != nil {
		return nil, fmt.Errorf("mirror: %w", err)
	}
	return &Mirror{fleet: fleet, sched: newScheduler(fleet, workload, Options{Policy: PolicyStock}, 0)}, nil
}

// Best returns the names of the feasible nodes with the highest score for
// the pod, any of which kube-scheduler may pick (ties are random); none when
// no node fits.
func (m *Mirror) Best(p Pod) []string {
	r := m.sched.request(p)
	var best []string
	bestScore := int64(-1)
	for i, st := range m.sched.states {
		if !modelAllows(p, m.fleet.Specs[i]) || !st.node.Fits(r) {
			continue
		}
		switch score := m.sched.stockScore(i, r); {
		case score > bestScore:
			best, bestScore = []string{m.fleet.Specs[i].Name}, score
		case score == bestScore:
			best = append(best, m.fleet.Specs[i].Name)
		}
	}
	return best
}

// ClaimSpec is the claim the simulator gives the pod, sized for the first
// node's GPUs (the nodes of a mirror are alike).
func (m *Mirror) ClaimSpec(p Pod) resourceapi.ResourceClaimSpec {
	return m.fleet.claim(0, 0, m.sched.request(p), nil).Spec
}

// Record places the pod on the node with the allocator and returns the GPU
// indices the allocator chose; nil when it found no room.
func (m *Mirror) Record(ctx context.Context, node string, p Pod) ([]int, error) {
	i, err := m.index(node)
	if err != nil {
		return nil, err
	}
	m.uid++
	return m.fleet.allocate(ctx, m.sched.states, i, m.uid, m.sched.request(p), nil)
}

func (m *Mirror) index(node string) (int, error) {
	for i, s := range m.fleet.Specs {
		if s.Name == node {
			return i, nil
		}
	}
	return 0, fmt.Errorf("mirror: no node %s", node)
}
