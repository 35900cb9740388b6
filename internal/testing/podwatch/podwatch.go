// Package podwatch records when pods are first seen bound to a node, for the
// benchmarks that measure a pod's create-to-bound latency on a live cluster.
// It watches through an informer rather than reading each pod in a loop, so
// the measurement does not load the API server it measures.
package podwatch

import (
	"context"
	"fmt"
	"maps"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// Bindings is when each pod of the watched namespaces was first seen bound,
// by "namespace/name".
type Bindings struct {
	mu      sync.Mutex
	bound   map[string]time.Time
	changed chan struct{}
	cancel  context.CancelFunc
}

// Start watches the pods of each namespace until ctx ends or Stop is called;
// it returns once the informers have synced.
func Start(ctx context.Context, client kubernetes.Interface, namespaces ...string) (*Bindings, error) {
	ctx, cancel := context.WithCancel(ctx)
	b := &Bindings{bound: map[string]time.Time{}, changed: make(chan struct{}, 1), cancel: cancel}
	record := func(obj any) {
		pod, ok := obj.(*corev1.Pod)
		if !ok || pod.Spec.NodeName == "" {
			return
		}
		now := time.Now()
		key := pod.Namespace + "/" + pod.Name
		b.mu.Lock()
		if _, seen := b.bound[key]; !seen {
			b.bound[key] = now
		}
		b.mu.Unlock()
		select {
		case b.changed <- struct{}{}:
		default:
		}
	}
	for _, ns := range namespaces {
		factory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(ns))
		informer := factory.Core().V1().Pods().Informer()
		if _, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    record,
			UpdateFunc: func(_, obj any) { record(obj) },
		}); err != nil {
			cancel()
			return nil, err
		}
		factory.Start(ctx.Done())
		if !cache.WaitForCacheSync(ctx.Done(), informer.HasSynced) {
			cancel()
			return nil, fmt.Errorf("pod informer of namespace %s did not sync: %w", ns, context.Cause(ctx))
		}
	}
	return b, nil
}

// Count is how many pods have been seen bound.
func (b *Bindings) Count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.bound)
}

// Snapshot is a copy of what has been seen so far.
func (b *Bindings) Snapshot() map[string]time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	return maps.Clone(b.bound)
}

// Changed receives after a pod is seen bound (coalesced: one value stands for
// any number of pods since the last receive).
func (b *Bindings) Changed() <-chan struct{} { return b.changed }

// Wait returns when the pod (namespace/name) was first seen bound, waiting
// for it up to timeout.
func (b *Bindings) Wait(ctx context.Context, key string, timeout time.Duration) (time.Time, error) {
	var at time.Time
	err := wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, timeout, true, func(context.Context) (bool, error) {
		b.mu.Lock()
		defer b.mu.Unlock()
		t, ok := b.bound[key]
		at = t
		return ok, nil
	})
	if err != nil {
		return time.Time{}, fmt.Errorf("pod %s not seen bound within %s: %w", key, timeout, err)
	}
	return at, nil
}

// Stop ends the watch.
func (b *Bindings) Stop() { b.cancel() }
