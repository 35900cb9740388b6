package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2/ktesting"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/internal/testing/builder"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

const idleNamespace = "tessera-system"

// eventLog records each Event as "Kind namespace/name reason".
type eventLog struct{ events []string }

func (r *eventLog) Eventf(regarding runtime.Object, _ runtime.Object, _, reason, _, _ string, _ ...any) {
	o := regarding.(client.Object)
	kind := fmt.Sprintf("%T", regarding)
	r.events = append(r.events, fmt.Sprintf("%s %s/%s %s", kind, o.GetNamespace(), o.GetName(), reason))
}
func (r *eventLog) AnnotatedEventf(regarding runtime.Object, related runtime.Object, _ map[string]string, t, reason, action, note string, args ...any) {
	r.Eventf(regarding, related, t, reason, action, note, args...)
}

// idleReport is node's idle-report Lease.
func idleReport(t *testing.T, node string, since map[string]time.Time) *coordinationv1.Lease {
	t.Helper()
	raw, err := json.Marshal(since)
	if err != nil {
		t.Fatal(err)
	}
	return &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{
		Namespace: idleNamespace, Name: tenancyv1.IdleReportName(node),
		Annotations: map[string]string{tenancyv1.AnnotationIdleSince: string(raw)},
	}}
}

func setReport(ctx context.Context, t *testing.T, c client.Client, l *coordinationv1.Lease) {
	t.Helper()
	old := &coordinationv1.Lease{}
	if err := c.Get(ctx, client.ObjectKeyFromObject(l), old); err != nil {
		t.Fatal(err)
	}
	old.Annotations = l.Annotations
	if err := c.Update(ctx, old); err != nil {
		t.Fatal(err)
	}
}

// idleMarks is, by claim, the status of ConditionIdle on each of its
// gpu.tessera.dev devices ("" where it is absent).
func idleMarks(ctx context.Context, t *testing.T, c client.Client) map[string][]string {
	t.Helper()
	var claims resourceapi.ResourceClaimList
	if err := c.List(ctx, &claims); err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for _, claim := range claims.Items {
		key := claim.Namespace + "/" + claim.Name
		out[key] = []string{}
		for _, res := range claim.Status.Allocation.Devices.Results {
			mark := ""
			for _, st := range claim.Status.Devices {
				if st.Pool == res.Pool && st.Device == res.Device {
					if c := meta.FindStatusCondition(st.Conditions, tenancyv1.ConditionIdle); c != nil {
						mark = string(c.Status)
					}
				}
			}
			out[key] = append(out[key], mark)
		}
	}
	return out
}

// TestIdleMarker follows two claims through a scripted timeline with
// --idle-after=1h: team-a's claim on n1, which n1 reports idle from 00:00,
// and team-b's on n2, which n1 (not its node) also reports idle and which is
// therefore never marked. The mark comes at 01:00, not before, with one
// Event on the claim and one on its pod, and goes when n1 reports the claim
// busy again.
func TestIdleMarker(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	scheme, err := Scheme()
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	ns := func(name, tenant string) *corev1.Namespace { return builder.MakeNamespace(name).Tenant(tenant).Obj() }
	idleA := builder.MakeClaim("idle-a").Namespace("a1").Pool("n1").Device("gpu", "gpu-0").Device("gpu", "gpu-1").ReservedFor("pod-a", types.UID("pod-a")).Obj()
	idleB := builder.MakeClaim("idle-b").Namespace("b1").Pool("n2").Share("gpu", "gpu-0-shared", "20Gi", "30", "s1").ReservedFor("pod-b", types.UID("pod-b")).Obj()
	lying := builder.MakeClaim("lying").Namespace("b1").Pool("n2").Device("gpu", "gpu-3").Obj()
	c := fake.NewClientBuilder().WithScheme(scheme).
		WithObjects(builder.MakeTenant("team-a").Obj(), builder.MakeTenant("team-b").Obj(), ns("a1", "team-a"), ns("b1", "team-b"), idleA, idleB, lying,
			idleReport(t, "n1", map[string]time.Time{"idle-a": t0, "lying": t0}),
			idleReport(t, "n2", map[string]time.Time{"idle-b": t0.Add(30 * time.Minute)}),
			&coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: idleNamespace, Name: tenancyv1.IdleReportName("n3"),
				Annotations: map[string]string{tenancyv1.AnnotationIdleSince: "not json"}}}).
		WithStatusSubresource(&resourceapi.ResourceClaim{}).Build()
	clock := &fakeClock{t: t0.Add(59 * time.Minute)}
	rec := &eventLog{}
	// The manager's cached client is c; its API reader counts the requests
	// a sync would make to the API server.
	api := &countingAPIReader{Reader: c}
	m := newManagedIdleMarker(managerClientsOf{cached: c, api: api}, rec, Options{IdleReportNamespace: idleNamespace, IdleAfter: time.Hour})
	m.now, m.showback = clock.now, nil

	steps := []struct {
		name   string
		at     time.Duration
		report map[string]time.Time
		marks  map[string][]string
		events []string
		gauge  map[[2]string]float64
	}{
		{
			name:  "not yet idle for an hour",
			at:    59 * time.Minute,
			marks: map[string][]string{"a1/idle-a": {"", ""}, "b1/idle-b": {""}, "b1/lying": {""}},
		},
		{
			name:  "idle for an hour: marked, with events",
			at:    time.Hour,
			marks: map[string][]string{"a1/idle-a": {"True", "True"}, "b1/idle-b": {""}, "b1/lying": {""}},
			events: []string{
				"*v1.ResourceClaim a1/idle-a Idle",
				"*v1.Pod a1/pod-a Idle",
			},
			gauge: map[[2]string]float64{{"team-a", "a1"}: 1},
		},
		{
			name:  "still idle: no second event; the share is idle for an hour too",
			at:    90 * time.Minute,
			marks: map[string][]string{"a1/idle-a": {"True", "True"}, "b1/idle-b": {"True"}, "b1/lying": {""}},
			events: []string{
				"*v1.ResourceClaim b1/idle-b Idle",
				"*v1.Pod b1/pod-b Idle",
			},
			gauge: map[[2]string]float64{{"team-a", "a1"}: 1, {"team-b", "b1"}: 1},
		},
		{
			name:   "busy again: the mark goes",
			at:     2 * time.Hour,
			report: map[string]time.Time{"lying": t0},
			marks:  map[string][]string{"a1/idle-a": {"", ""}, "b1/idle-b": {"True"}, "b1/lying": {""}},
			gauge:  map[[2]string]float64{{"team-b", "b1"}: 1},
		},
	}
	for _, step := range steps {
		clock.t = t0.Add(step.at)
		if step.report != nil {
			setReport(ctx, t, c, idleReport(t, "n1", step.report))
		}
		rec.events = nil
		if err := m.sync(ctx); err != nil {
			t.Fatalf("%s: sync: %v", step.name, err)
		}
		if diff := cmp.Diff(step.marks, idleMarks(ctx, t, c)); diff != "" {
			t.Errorf("%s: marks (-want +got):\n%s", step.name, diff)
		}
		if diff := cmp.Diff(step.events, rec.events); diff != "" {
			t.Errorf("%s: events (-want +got):\n%s", step.name, diff)
		}
		for _, k := range [][2]string{{"team-a", "a1"}, {"team-b", "b1"}} {
			if got := testutil.ToFloat64(idleClaims.WithLabelValues(k[0], k[1])); got != step.gauge[k] {
				t.Errorf("%s: tessera_idle_claims%v = %v, want %v", step.name, k, got, step.gauge[k])
			}
		}
	}
	// The reports, claims, tenants and namespaces all came from the cache.
	if len(api.requests) != 0 {
		t.Errorf("%d syncs made %d API requests, want none: %v", len(steps), len(api.requests), api.requests)
	}
}

// TestIdleMarkerFeedsShowback: the devices of claims their node reports idle
// are not active in the tenant's showback. team-a holds 3 GPUs: a claim of
// 2 that n1 reports idle and one of 1 that it does not. Over an hour that is
// 3 device-hours held, 1 active.
func TestIdleMarkerFeedsShowback(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	scheme, err := Scheme()
	if err != nil {
		t.Fatal(err)
	}
	const class = "gpu.tessera.dev"
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	team := builder.MakeTenant("showback-idle").Obj()
	ns := builder.MakeNamespace("si1").Tenant("showback-idle").Obj()
	request := builder.MakeRequest("gpu", class).Obj()
	idle := builder.MakeClaim("idle").Namespace("si1").Request(request).Pool("n1").Device("gpu", "gpu-0").Device("gpu", "gpu-1").Obj()
	busy := builder.MakeClaim("busy").Namespace("si1").Request(request).Pool("n1").Device("gpu", "gpu-2").Obj()
	c := fake.NewClientBuilder().WithScheme(scheme).
		WithObjects(team, ns, idle, busy, idleReport(t, "n1", map[string]time.Time{"idle": t0})).
		WithStatusSubresource(&resourceapi.ResourceClaim{}).Build()
	clock := &fakeClock{t: t0}
	s := newShowback(clock.now)
	t.Cleanup(func() { s.forget(team.Name) })
	m := &IdleMarker{client: c, namespace: idleNamespace, recorder: &eventLog{}, now: clock.now, after: time.Hour, showback: s}

	s.observe(team.Name, tenancy.Usage{Devices: map[string]int64{class: 3}})
	if err := m.sync(ctx); err != nil {
		t.Fatal(err)
	}
	clock.advance(time.Hour)
	s.flush()
	got := map[string]float64{
		"held":   testutil.ToFloat64(tenantDeviceHours.WithLabelValues(team.Name, class)),
		"active": testutil.ToFloat64(tenantActiveDeviceHours.WithLabelValues(team.Name, class)),
	}
	if diff := cmp.Diff(map[string]float64{"held": 3, "active": 1}, got); diff != "" {
		t.Errorf("device-hours (-want +got):\n%s", diff)
	}
}
