package podwatch

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// TestBindingsSeesFirstBinding: a pod counts once it has a node, at the
// first time it is seen so; pods of namespaces not watched and pods without
// a node do not count; Wait gives up at its timeout.
func TestBindingsSeesFirstBinding(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client := fake.NewClientset()
	b, err := Start(ctx, client, "a", "b")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Stop()
	create := func(ns, name, node string) {
		t.Helper()
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: corev1.PodSpec{NodeName: node}}
		if _, err := client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	create("a", "pending", "")
	create("c", "elsewhere", "n1")
	before := time.Now()
	create("b", "bound", "n1")
	at, err := b.Wait(ctx, "b/bound", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if at.Before(before) {
		t.Errorf("b/bound seen bound at %v, before it was created (%v)", at, before)
	}
	if _, err := b.Wait(ctx, "a/pending", 100*time.Millisecond); err == nil {
		t.Error("a pod without a node was counted bound")
	}
	pod, err := client.CoreV1().Pods("a").Get(ctx, "pending", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod.Spec.NodeName = "n2"
	if _, err := client.CoreV1().Pods("a").Update(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Wait(ctx, "a/pending", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	// A later update of a bound pod keeps the first time.
	first := b.Snapshot()["a/pending"]
	select {
	case <-b.Changed():
	default:
		t.Error("no change signalled after pods were bound")
	}
	pod.Labels = map[string]string{"x": "y"}
	if _, err := client.CoreV1().Pods("a").Update(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// One informer handles a namespace's events in order: once a pod
	// bound after the update is seen, the update has been handled.
	create("a", "marker", "n1")
	if _, err := b.Wait(ctx, "a/marker", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if got := b.Snapshot(); got["a/pending"] != first || len(got) != 3 {
		t.Errorf("snapshot %v: want a/pending still at %v, b/bound and a/marker, nothing of namespace c", got, first)
	}
	if b.Count() != 3 {
		t.Errorf("count %d, want 3", b.Count())
	}
}
