package controller

import (
	"context"
	"fmt"
	"sync"

	resourceapi "k8s.io/api/resource/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

// deviceCatalog remembers the GPU memory of Tessera's devices after their
// slices are gone, for as long as an allocated claim holds them
// (tenancy.RememberMemory). A kubelet restart deletes its node's slices for
// about 30 s; the claims allocated there still hold their devices, and
// without their memory no decision of their tenants could be made. The
// admission and tenant reconcilers share one catalog, so either one's view
// of the slices serves both.
//
// What it cannot know is the memory of a device whose slice was gone before
// this process first saw it (the controller started during a kubelet
// restart): such claims cannot be costed until the slice is back.
type deviceCatalog struct {
	mu sync.Mutex
	// known is replaced, never changed in place: callers keep reading a map
	// it returned while the next update builds another.
	known map[tenancy.DeviceID]int64
}

func newDeviceCatalog() *deviceCatalog {
	return &deviceCatalog{known: map[tenancy.DeviceID]int64{}}
}

// memory lists the slices and returns the memory to cost with: what they
// publish plus what is remembered of held devices they do not. Claims are
// listed only when a remembered device is unpublished, which is rare (a
// kubelet restarting, a node going away).
func (c *deviceCatalog) memory(ctx context.Context, r client.Reader) (map[tenancy.DeviceID]int64, error) {
	var slices resourceapi.ResourceSliceList
	if err := r.List(ctx, &slices); err != nil {
		return nil, fmt.Errorf("list ResourceSlices: %w", err)
	}
	published := tenancy.DeviceMemory(ptrs(slices.Items))
	c.mu.Lock()
	defer c.mu.Unlock()
	var allocated map[tenancy.DeviceID]bool
	for d := range c.known {
		if _, ok := published[d]; ok {
			continue
		}
		var claims resourceapi.ResourceClaimList
		if err := r.List(ctx, &claims); err != nil {
			return nil, fmt.Errorf("list claims: %w", err)
		}
		allocated = tenancy.AllocatedDevices(ptrs(claims.Items))
		break
	}
	c.known = tenancy.RememberMemory(c.known, published, allocated)
	return c.known, nil
}
