package controller

import (
	"context"
	"fmt"
	"maps"
	"sync"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/util/sets"
	"sigs.k8s.io/controller-runtime/pkg/client"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
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
// restart): for those, the memory recorded in the claim's status when it was
// admitted serves (costing).
type deviceCatalog struct {
	mu sync.Mutex
	// known holds, per pool, what the pool last published plus what is
	// remembered of its held devices. Each pool's map is replaced, never
	// changed in place.
	known map[string]map[tenancy.DeviceID]int64
}

func newDeviceCatalog() *deviceCatalog {
	return &deviceCatalog{known: map[string]map[tenancy.DeviceID]int64{}}
}

// memory returns the memory to cost the given devices with: for each pool
// they lie in, what the pool's slices publish now (indexSlicePool) plus what
// is remembered of the pool's devices that they do not publish and that an
// allocated claim still holds (indexClaimDevice, asked only for such
// devices, which is rare: a kubelet restarting, a node going away). It
// reads the slices of those pools only, never the cluster's others. The
// result may hold other devices of the same pools; it is the caller's.
func (c *deviceCatalog) memory(ctx context.Context, r client.Reader, devices map[tenancy.DeviceID]bool) (map[tenancy.DeviceID]int64, error) {
	pools := sets.New[string]()
	for d := range devices {
		if d.Driver == gpuapi.DriverName {
			pools.Insert(d.Pool)
		}
	}
	out := map[tenancy.DeviceID]int64{}
	for _, pool := range sets.List(pools) {
		var slices resourceapi.ResourceSliceList
		if err := r.List(ctx, &slices, client.MatchingFields{indexSlicePool: pool}); err != nil {
			return nil, fmt.Errorf("list ResourceSlices of pool %s: %w", pool, err)
		}
		known, err := c.update(ctx, r, pool, tenancy.DeviceMemory(ptrs(slices.Items)))
		if err != nil {
			return nil, err
		}
		maps.Copy(out, known)
	}
	return out, nil
}

// update remembers what pool publishes now and returns the pool's memory.
func (c *deviceCatalog) update(ctx context.Context, r client.Reader, pool string, published map[tenancy.DeviceID]int64) (map[tenancy.DeviceID]int64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	allocated := map[tenancy.DeviceID]bool{}
	for d := range c.known[pool] {
		if _, ok := published[d]; ok {
			continue
		}
		var claims resourceapi.ResourceClaimList
		if err := r.List(ctx, &claims, client.MatchingFields{indexClaimDevice: deviceKey(d)}); err != nil {
			return nil, fmt.Errorf("list claims of device %s: %w", deviceKey(d), err)
		}
		allocated[d] = len(claims.Items) > 0
	}
	known := tenancy.RememberMemory(c.known[pool], published, allocated)
	if len(known) == 0 {
		delete(c.known, pool)
	} else {
		c.known[pool] = known
	}
	return known, nil
}

// costing returns the memory to cost the claims' devices with: what the
// catalog knows of their pools (memory) and, for devices of theirs that
// are admitted, what the controller recorded when it admitted them
// (tenancy.RecordedMemory), the larger of the two where both are known. The
// records let a controller that starts while a node's slices are gone cost
// the claims admitted there.
func (c *deviceCatalog) costing(ctx context.Context, r client.Reader, claims []*resourceapi.ResourceClaim) (map[tenancy.DeviceID]int64, error) {
	known, err := c.memory(ctx, r, tenancy.AllocatedDevices(claims))
	if err != nil {
		return nil, err
	}
	return tenancy.CostingMemory(known, tenancy.RecordedMemory(claims)), nil
}
