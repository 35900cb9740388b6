package prepare

import (
	"context"

	"github.com/tessera-gpu/tessera/internal/checkpoint"
)

// PreparedClaims returns a copy of every claim whose devices are all made,
// sorted by UID: what the per-claim metrics report on.
func (p *Preparer) PreparedClaims() []*checkpoint.Claim {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []*checkpoint.Claim
	for _, uid := range p.cp.UIDs() {
		if c := p.cp.Claims[uid]; c.State == checkpoint.PrepareCompleted {
			out = append(out, c.DeepCopy())
		}
	}
	return out
}

// MPSProcesses returns, by claim UID, the processes of the claim's own MPS
// daemon in the plugin's PID namespace (see sharing.ProcessLister).
func (p *Preparer) MPSProcesses(ctx context.Context) (map[string][]int, error) {
	return p.mps.Processes(ctx)
}
