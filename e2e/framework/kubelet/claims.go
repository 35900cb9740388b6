package kubelet

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	drapb "k8s.io/kubelet/pkg/apis/dra/v1"
)

// prepare prepares the pod's claims (by the pod's names for them) for the pod
// named podKey, as the kubelet's DRA manager does: a claim already prepared
// for another pod is shared, and the others go to their driver in one
// NodePrepareResources call. Errors read as the kubelet's.
func (k *Kubelet) prepare(ctx context.Context, podKey string, claims map[string]*resourceapi.ResourceClaim) (map[string]*PreparedClaim, error) {
	out := map[string]*PreparedClaim{}
	batches := map[string][]*resourceapi.ResourceClaim{} // by driver
	k.mu.Lock()
	for podClaimName, claim := range claims {
		if p := k.prepared[claim.UID]; p != nil {
			p.Pods[podKey] = true
			k.addRef(podKey, claim.UID)
			out[podClaimName] = p
			continue
		}
		drivers := map[string]bool{}
		for _, r := range claim.Status.Allocation.Devices.Results {
			drivers[r.Driver] = true
		}
		if len(drivers) != 1 {
			k.mu.Unlock()
			return nil, fmt.Errorf("claim %s uses drivers %v; the stand-in prepares claims of exactly one driver", claim.Name, slices.Sorted(maps.Keys(drivers)))
		}
		driver := slices.Collect(maps.Keys(drivers))[0]
		batches[driver] = append(batches[driver], claim)
	}
	k.mu.Unlock()

	for driver, batch := range batches {
		results, err := k.prepareBatch(ctx, driver, batch)
		if err != nil {
			return nil, fmt.Errorf("prepare dynamic resources: %w", err)
		}
		k.mu.Lock()
		for podClaimName, claim := range claims {
			devices, ok := results[claim.UID]
			if !ok {
				continue
			}
			prepared := k.prepared[claim.UID]
			if prepared == nil {
				prepared = &PreparedClaim{Namespace: claim.Namespace, Name: claim.Name, UID: claim.UID, Driver: driver, Devices: devices, Pods: map[string]bool{}}
				k.prepared[claim.UID] = prepared
			}
			prepared.Pods[podKey] = true
			k.addRef(podKey, claim.UID)
			out[podClaimName] = prepared
			klog.FromContext(ctx).V(1).Info("Prepared claim", "claim", klog.KObj(claim), "devices", len(devices))
		}
		k.mu.Unlock()
	}
	return out, nil
}

// prepareBatch calls the driver's NodePrepareResources once for all claims and
// returns each claim's devices.
func (k *Kubelet) prepareBatch(ctx context.Context, driver string, claims []*resourceapi.ResourceClaim) (map[types.UID][]*drapb.Device, error) {
	p := k.registry.get(driver)
	if p == nil {
		return nil, fmt.Errorf("DRA driver %s is not registered on node %s", driver, k.opts.NodeName)
	}
	req := &drapb.NodePrepareResourcesRequest{}
	for _, c := range claims {
		req.Claims = append(req.Claims, &drapb.Claim{Namespace: c.Namespace, Name: c.Name, Uid: string(c.UID)})
	}
	callCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := p.client.NodePrepareResources(callCtx, req)
	if err != nil {
		return nil, fmt.Errorf("NodePrepareResources: %w", err)
	}
	out := map[types.UID][]*drapb.Device{}
	for _, c := range claims {
		result := resp.Claims[string(c.UID)]
		if result == nil {
			continue
		}
		if result.Error != "" {
			return nil, fmt.Errorf("NodePrepareResources failed for ResourceClaim %s: %s", c.Name, result.Error)
		}
		out[c.UID] = result.Devices
	}
	if unfinished := len(claims) - len(out); unfinished != 0 {
		return nil, fmt.Errorf("NodePrepareResources skipped %d ResourceClaims", unfinished)
	}
	return out, nil
}

func (k *Kubelet) addRef(podKey string, claim types.UID) {
	if k.podRefs[podKey] == nil {
		k.podRefs[podKey] = map[types.UID]bool{}
	}
	k.podRefs[podKey][claim] = true
}

// release drops the pod's hold on its claims and unprepares those no other pod
// on the node holds, in one NodeUnprepareResources call per driver, as the
// kubelet does. Errors read as the kubelet's.
func (k *Kubelet) release(ctx context.Context, podKey string) error {
	k.mu.Lock()
	batches := map[string][]*PreparedClaim{} // by driver
	for uid := range k.podRefs[podKey] {
		c := k.prepared[uid]
		if c == nil {
			continue
		}
		delete(c.Pods, podKey)
		if len(c.Pods) == 0 {
			batches[c.Driver] = append(batches[c.Driver], c)
		}
	}
	k.mu.Unlock()

	for driver, batch := range batches {
		if err := k.unprepareBatch(ctx, driver, batch); err != nil {
			return fmt.Errorf("unprepare dynamic resources: %w", err)
		}
		k.mu.Lock()
		for _, c := range batch {
			delete(k.prepared, c.UID)
			klog.FromContext(ctx).V(1).Info("Unprepared claim", "claim", klog.KRef(c.Namespace, c.Name))
		}
		k.mu.Unlock()
	}
	k.mu.Lock()
	delete(k.podRefs, podKey)
	k.mu.Unlock()
	return nil
}

func (k *Kubelet) unprepareBatch(ctx context.Context, driver string, claims []*PreparedClaim) error {
	p := k.registry.get(driver)
	if p == nil {
		return fmt.Errorf("DRA driver %s is not registered on node %s", driver, k.opts.NodeName)
	}
	req := &drapb.NodeUnprepareResourcesRequest{}
	for _, c := range claims {
		req.Claims = append(req.Claims, &drapb.Claim{Namespace: c.Namespace, Name: c.Name, Uid: string(c.UID)})
	}
	callCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := p.client.NodeUnprepareResources(callCtx, req)
	if err != nil {
		return fmt.Errorf("NodeUnprepareResources: %w", err)
	}
	done := 0
	for _, c := range claims {
		r := resp.Claims[string(c.UID)]
		if r == nil {
			continue
		}
		if r.Error != "" {
			return fmt.Errorf("NodeUnprepareResources failed for ResourceClaim %s: %s", c.Name, r.Error)
		}
		done++
	}
	if unfinished := len(claims) - done; unfinished != 0 {
		return fmt.Errorf("NodeUnprepareResources skipped %d ResourceClaims", unfinished)
	}
	return nil
}
