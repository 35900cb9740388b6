package schedulerbench

import (
	"context"
	"maps"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// bindingWatch records when each pod of a namespace was first seen bound.
type bindingWatch struct {
	mu      sync.Mutex
	bound   map[string]time.Time
	changed chan struct{}
	cancel  context.CancelFunc
}

func newBindingWatch(ctx context.Context, client kubernetes.Interface, ns string) *bindingWatch {
	ctx, cancel := context.WithCancel(ctx)
	w := &bindingWatch{bound: map[string]time.Time{}, changed: make(chan struct{}, 1), cancel: cancel}
	factory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(ns))
	record := func(obj any) {
		pod, ok := obj.(*corev1.Pod)
		if !ok || pod.Spec.NodeName == "" {
			return
		}
		now := time.Now()
		w.mu.Lock()
		if _, seen := w.bound[pod.Name]; !seen {
			w.bound[pod.Name] = now
		}
		w.mu.Unlock()
		select {
		case w.changed <- struct{}{}:
		default:
		}
	}
	_, _ = factory.Core().V1().Pods().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    record,
		UpdateFunc: func(_, obj any) { record(obj) },
	})
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	return w
}

func (w *bindingWatch) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.bound)
}

func (w *bindingWatch) snapshot() map[string]time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	return maps.Clone(w.bound)
}

func (w *bindingWatch) stop() { w.cancel() }
