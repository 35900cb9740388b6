package controller

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2/ktesting"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	"github.com/tessera-gpu/tessera/internal/testing/builder"
)

// TestIdleReclaim: two tenants' claims, idle on n1 since 00:00, marked at
// 01:00 (--idle-after=1h). team-a opted in to reclaim after 2h, team-b did
// not. Before 02:00 nothing is evicted; at 02:00 team-a's pod is evicted
// through the Eviction API, once, with an Event saying why; team-b's pod is
// left alone however long its claim stays idle.
func TestIdleReclaim(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	scheme, err := Scheme()
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	ns := func(name, tenant string) *corev1.Namespace { return builder.MakeNamespace(name).Tenant(tenant).Obj() }
	pod := func(ns, name string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(name)}}
	}
	optedIn := builder.MakeClaim("opted-in").Namespace("a1").Pool("n1").Device("gpu", "gpu-0").ReservedFor("pod-a", "pod-a").Obj()
	optedOut := builder.MakeClaim("opted-out").Namespace("b1").Pool("n1").Device("gpu", "gpu-1").ReservedFor("pod-b", "pod-b").Obj()
	var evicted []string
	c := fake.NewClientBuilder().WithScheme(scheme).
		WithObjects(builder.MakeTenant("team-a").IdleReclaim(2*time.Hour).Obj(), builder.MakeTenant("team-b").Obj(),
			ns("a1", "team-a"), ns("b1", "team-b"), optedIn, optedOut, pod("a1", "pod-a"), pod("b1", "pod-b"),
			idleReport(t, "n1", map[string]time.Time{"opted-in": t0, "opted-out": t0})).
		WithStatusSubresource(&resourceapi.ResourceClaim{}).
		WithInterceptorFuncs(interceptor.Funcs{
			SubResourceCreate: func(ctx context.Context, c client.Client, sub string, obj client.Object, subObj client.Object, opts ...client.SubResourceCreateOption) error {
				if e, ok := subObj.(*policyv1.Eviction); ok && sub == "eviction" {
					if e.DeleteOptions == nil || e.DeleteOptions.Preconditions == nil || *e.DeleteOptions.Preconditions.UID != obj.GetUID() {
						t.Errorf("eviction of %s without its UID as precondition", obj.GetName())
					}
					evicted = append(evicted, obj.GetNamespace()+"/"+obj.GetName())
				}
				return c.SubResource(sub).Create(ctx, obj, subObj, opts...)
			},
		}).Build()
	clock := &fakeClock{}
	rec := &eventLog{}
	m := &IdleMarker{client: c, namespace: idleNamespace, recorder: rec, now: clock.now, after: time.Hour}

	for _, step := range []struct {
		at      time.Duration
		evicted []string
		events  []string
	}{
		{at: time.Hour, events: []string{
			"*v1.ResourceClaim a1/opted-in Idle", "*v1.Pod a1/pod-a Idle",
			"*v1.ResourceClaim b1/opted-out Idle", "*v1.Pod b1/pod-b Idle",
		}},
		{at: 2*time.Hour - time.Second},
		{at: 2 * time.Hour, evicted: []string{"a1/pod-a"}, events: []string{
			"*v1.Pod a1/pod-a IdleReclaimed", "*v1.ResourceClaim a1/opted-in IdleReclaimed",
		}},
		{at: 3 * time.Hour, evicted: []string{"a1/pod-a"}},
		{at: 48 * time.Hour, evicted: []string{"a1/pod-a"}},
	} {
		clock.t = t0.Add(step.at)
		rec.events = nil
		if err := m.sync(ctx); err != nil {
			t.Fatalf("at %s: sync: %v", step.at, err)
		}
		if diff := cmp.Diff(step.evicted, evicted); diff != "" {
			t.Errorf("at %s: pods evicted (-want +got):\n%s", step.at, diff)
		}
		if diff := cmp.Diff(step.events, rec.events); diff != "" {
			t.Errorf("at %s: events (-want +got):\n%s", step.at, diff)
		}
	}
	var pods corev1.PodList
	if err := c.List(ctx, &pods); err != nil {
		t.Fatal(err)
	}
	if len(pods.Items) != 1 || pods.Items[0].Name != "pod-b" {
		t.Errorf("pods left: %v, want only pod-b", pods.Items)
	}
}
