package plugin

import (
	"context"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"

	"github.com/tessera-gpu/tessera/internal/claimusage"
	"github.com/tessera-gpu/tessera/internal/prepare"
)

// claimPodRefresh is how often the sampler looks a claim's pods up again:
// pods that share a claim can join it after the kubelet prepared it for the
// first, without another prepare call. One get per claim and period.
const claimPodRefresh = 5 * time.Minute

// sampledPreparer tells the claim sampler what prepare and unprepare did:
// the pods a prepared claim is reserved for, and the claims whose series
// must go as their unprepare returns. Embedding keeps the Preparer's other
// methods (PreparedLister).
type sampledPreparer struct {
	*prepare.Preparer
	sampler *claimusage.Sampler
}

func (p sampledPreparer) Prepare(ctx context.Context, claim *resourceapi.ResourceClaim) kubeletplugin.PrepareResult {
	res := p.Preparer.Prepare(ctx, claim)
	if res.Err == nil {
		p.sampler.Prepared(claim)
	}
	return res
}

func (p sampledPreparer) Unprepare(ctx context.Context, claim kubeletplugin.NamespacedObject) error {
	err := p.Preparer.Unprepare(ctx, claim)
	if err == nil {
		p.sampler.Forget(string(claim.UID))
	}
	return err
}
