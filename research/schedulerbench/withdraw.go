package schedulerbench

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/pkg/inventory"
	"github.com/tessera-gpu/tessera/pkg/resourceslice"
	"github.com/tessera-gpu/tessera/research/scheduling"
)

// Withdrawn is Tessera's layout with resourceslice.Options.WithdrawBlocked:
// during its phase a publisher republishes a node's slices whenever a claim
// on it is allocated or freed, as if each allocated device were prepared at
// once (the best case for withdrawal: on a real node, prepare follows the
// pod's start). It writes what the plugin's publication controller
// (k8s.io/dynamic-resource-allocation/resourceslice) would: when one slice
// changes, that slice under the same pool generation; otherwise every slice
// under the next generation.
var Withdrawn = func() scheduling.Layout {
	l := scheduling.Tessera
	l.Name = "tessera-withdrawn"
	return l
}()

// republisher keeps each node's slices at what the plugin would publish
// with the node's allocated devices prepared.
type republisher struct {
	client kubernetes.Interface
	inv    inventory.Node
	out    io.Writer

	mu    sync.Mutex
	dirty map[string]bool
	// claims maps allocated claims to their node and devices.
	claims     map[string]allocation
	generation map[string]int64
	// current is what each node has published.
	current map[string][]*resourceapi.ResourceSlice
	// updates counts slice writes, bumps new pool generations.
	updates, bumps int
}

type allocation struct {
	node    string
	devices []string
}

func newRepublisher(client kubernetes.Interface, inv inventory.Node, out io.Writer) *republisher {
	return &republisher{client: client, inv: inv, out: out, dirty: map[string]bool{}, claims: map[string]allocation{},
		generation: map[string]int64{}, current: map[string][]*resourceapi.ResourceSlice{}}
}

// slices returns what the node publishes now, named as the first
// publication names them.
func (r *republisher) slices(node string) []*resourceapi.ResourceSlice {
	r.mu.Lock()
	prepared := map[string]bool{}
	for _, a := range r.claims {
		if a.node == node {
			for _, d := range a.devices {
				prepared[d] = true
			}
		}
	}
	r.mu.Unlock()
	res := resourceslice.Build(node, r.inv, resourceslice.Options{Pool: "default", Prepared: prepared, WithdrawBlocked: true})
	pool := res.Pools[node]
	pool.Generation = r.generation[node]
	res.Pools[node] = pool
	return resourceslice.Objects(node, res)
}

// run watches the namespace's claims and republishes changed nodes until ctx ends.
func (r *republisher) run(ctx context.Context, ns string) {
	factory := informers.NewSharedInformerFactoryWithOptions(r.client, 0, informers.WithNamespace(ns))
	update := func(obj any) {
		claim, ok := obj.(*resourceapi.ResourceClaim)
		if !ok {
			if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				claim, _ = tomb.Obj.(*resourceapi.ResourceClaim)
			}
		}
		if claim == nil {
			return
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		old, had := r.claims[claim.Name]
		var now allocation
		if a := claim.Status.Allocation; a != nil && claim.DeletionTimestamp == nil {
			for _, res := range a.Devices.Results {
				if res.Driver == gpuapi.DriverName {
					now.node = res.Pool
					now.devices = append(now.devices, res.Device)
				}
			}
		}
		switch {
		case now.node != "":
			r.claims[claim.Name] = now
			r.dirty[now.node] = true
		case had:
			delete(r.claims, claim.Name)
		}
		if had {
			r.dirty[old.node] = true
		}
	}
	_, _ = factory.Resource().V1().ResourceClaims().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: update, UpdateFunc: func(_, obj any) { update(obj) }, DeleteFunc: update,
	})
	factory.Start(ctx.Done())
	ticker := time.NewTicker(100 * time.Millisecond)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		r.mu.Lock()
		var nodes []string
		for n := range r.dirty {
			nodes = append(nodes, n)
		}
		r.dirty = map[string]bool{}
		r.mu.Unlock()
		if err := parallel(ctx, nodes, r.republish); err != nil && ctx.Err() == nil {
			_, _ = fmt.Fprintf(r.out, "[%s] republish: %v\n", Withdrawn.Name, err)
		}
	}
}

// republish writes what changed in a node's slices as the publication
// controller does: a single changed slice is updated under the same pool
// generation; more changes (or a different number of slices) are written,
// every slice, under the next generation, and slices no longer needed are
// deleted.
func (r *republisher) republish(ctx context.Context, node string) error {
	next := r.slices(node)
	r.mu.Lock()
	cur := r.current[node]
	r.mu.Unlock()
	changed := changedSlices(cur, next)
	if len(next) != len(cur) || len(changed) > 1 {
		r.mu.Lock()
		r.generation[node]++
		r.bumps++
		r.mu.Unlock()
		next = r.slices(node)
		changed = make([]int, len(next))
		for i := range next {
			changed[i] = i
		}
	}
	for _, i := range changed {
		s := next[i]
		cur, err := r.client.ResourceV1().ResourceSlices().Get(ctx, s.Name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			_, err = r.client.ResourceV1().ResourceSlices().Create(ctx, s, metav1.CreateOptions{})
		case err == nil:
			s.ResourceVersion = cur.ResourceVersion
			_, err = r.client.ResourceV1().ResourceSlices().Update(ctx, s, metav1.UpdateOptions{})
		}
		if err != nil {
			return fmt.Errorf("republish %s: %w", s.Name, err)
		}
	}
	r.mu.Lock()
	r.current[node] = next
	r.updates += len(changed)
	r.mu.Unlock()
	for i := len(next); i < len(cur); i++ {
		name := fmt.Sprintf("%s-%s-%d", node, strings.ReplaceAll(gpuapi.DriverName, ".", "-"), i)
		if err := r.client.ResourceV1().ResourceSlices().Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete %s: %w", name, err)
		}
	}
	return nil
}

// changedSlices returns the indices of the slices of next whose devices or
// counter sets differ from those of the slice at the same index in cur.
func changedSlices(cur, next []*resourceapi.ResourceSlice) []int {
	var out []int
	for i, s := range next {
		if i >= len(cur) || !equality.Semantic.DeepEqual(cur[i].Spec.Devices, s.Spec.Devices) ||
			!equality.Semantic.DeepEqual(cur[i].Spec.SharedCounters, s.Spec.SharedCounters) {
			out = append(out, i)
		}
	}
	return out
}
