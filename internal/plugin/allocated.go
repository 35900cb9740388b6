package plugin

import (
	"context"
	"fmt"
	"slices"
	"sync"

	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
)

// allocatedClaims follows the ResourceClaims that have devices of this
// node's pool allocated, as the API server shows them.
//
// Withdrawal hides what the checkpoint's devices block. The checkpoint can
// name a device that is no longer allocated (an entry whose unprepare failed,
// or another plugin instance's view of the checkpoint one write behind),
// and a device it blocks may then have been allocated to another claim
// meanwhile: hiding that device would let the allocator count its counters
// free and give out the rest of its GPU twice. So every device the API shows
// as allocated is published (resourceslice.Options.Allocated).
type allocatedClaims struct {
	pool     string
	informer cache.SharedIndexInformer
	// changed is called after the set of allocated devices changed.
	changed func()

	mu sync.Mutex
	// devices are each claim's devices of the pool.
	devices map[types.UID][]string
}

// newAllocatedClaims watches every ResourceClaim (the API cannot select
// claims by the node of their allocation); only what names this pool is
// kept.
func newAllocatedClaims(client kubernetes.Interface, pool string, changed func()) *allocatedClaims {
	a := &allocatedClaims{pool: pool, changed: changed, devices: map[types.UID][]string{}}
	claims := client.ResourceV1().ResourceClaims(metav1.NamespaceAll)
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
			return claims.List(ctx, opts)
		},
		WatchFuncWithContext: func(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
			return claims.Watch(ctx, opts)
		},
	}
	// A fake clientset (tests) says that it cannot stream a watch list.
	a.informer = cache.NewSharedIndexInformer(cache.ToListWatcherWithWatchListSemantics(lw, client), &resourceapi.ResourceClaim{}, 0, cache.Indexers{})
	// A cluster's claims can be many; the cache keeps only their names and
	// this pool's results.
	_ = a.informer.SetTransform(a.strip)
	_, _ = a.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { a.set(obj) },
		UpdateFunc: func(_, obj any) { a.set(obj) },
		DeleteFunc: func(obj any) {
			if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = tomb.Obj
			}
			if claim, ok := obj.(*resourceapi.ResourceClaim); ok {
				a.update(claim.UID, nil)
			}
		},
	})
	return a
}

// run follows the claims until ctx ends.
func (a *allocatedClaims) run(ctx context.Context) { a.informer.RunWithContext(ctx) }

// waitSynced waits until the first list is in, so that no publication
// leaves out a device allocated before the plugin started.
func (a *allocatedClaims) waitSynced(ctx context.Context) error {
	if !cache.WaitForCacheSync(ctx.Done(), a.informer.HasSynced) {
		return fmt.Errorf("list the allocated ResourceClaims of pool %s: %w", a.pool, context.Cause(ctx))
	}
	return nil
}

// strip keeps of a claim its identity and its results on this pool.
func (a *allocatedClaims) strip(obj any) (any, error) {
	claim, ok := obj.(*resourceapi.ResourceClaim)
	if !ok {
		return obj, nil
	}
	out := &resourceapi.ResourceClaim{ObjectMeta: metav1.ObjectMeta{
		Name: claim.Name, Namespace: claim.Namespace, UID: claim.UID, ResourceVersion: claim.ResourceVersion,
	}}
	if names := a.poolDevices(claim); len(names) > 0 {
		results := make([]resourceapi.DeviceRequestAllocationResult, 0, len(names))
		for _, n := range names {
			results = append(results, resourceapi.DeviceRequestAllocationResult{Driver: gpuapi.DriverName, Pool: a.pool, Device: n})
		}
		out.Status.Allocation = &resourceapi.AllocationResult{Devices: resourceapi.DeviceAllocationResult{Results: results}}
	}
	return out, nil
}

// poolDevices names the claim's allocated devices of this pool.
func (a *allocatedClaims) poolDevices(claim *resourceapi.ResourceClaim) []string {
	if claim.Status.Allocation == nil {
		return nil
	}
	var out []string
	for _, r := range claim.Status.Allocation.Devices.Results {
		if r.Driver == gpuapi.DriverName && r.Pool == a.pool {
			out = append(out, r.Device)
		}
	}
	return out
}

func (a *allocatedClaims) set(obj any) {
	if claim, ok := obj.(*resourceapi.ResourceClaim); ok {
		a.update(claim.UID, a.poolDevices(claim))
	}
}

// update records a claim's devices, and reports a change of the set.
func (a *allocatedClaims) update(uid types.UID, devices []string) {
	a.mu.Lock()
	old, had := a.devices[uid]
	if len(devices) == 0 {
		delete(a.devices, uid)
	} else {
		a.devices[uid] = devices
	}
	a.mu.Unlock()
	if (had || len(devices) > 0) && !slices.Equal(old, devices) && a.changed != nil {
		a.changed()
	}
}

// Devices names every device of the pool that some claim has allocated.
func (a *allocatedClaims) Devices() map[string]bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := map[string]bool{}
	for _, names := range a.devices {
		for _, n := range names {
			out[n] = true
		}
	}
	return out
}
