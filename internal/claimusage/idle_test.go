package claimusage_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/klog/v2/ktesting"

	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/internal/claimusage"
	"github.com/tessera-gpu/tessera/internal/nvml/nvmlmock"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

// reports records every idle report published; fail makes the next
// publication fail.
type reports struct {
	sent []map[string]time.Time
	fail bool
}

func (r *reports) publish(_ context.Context, since map[string]time.Time) error {
	if r.fail {
		r.fail = false
		return errors.New("API server unavailable")
	}
	r.sent = append(r.sent, since)
	return nil
}

// TestIdleReport follows four claims through samples 10 s apart, with a
// 5 % threshold: a whole GPU at 2 %, an MPS share whose processes are at
// 0 %, a MIG instance at 1 % (idle only from the second sample, when GPM
// has a rate), and a whole GPU at 80 %, never idle. A claim keeps the time
// it first was idle; the report is published only when it changes, and
// again after a failed publication; a busy sample drops the claim.
func TestIdleReport(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	now := t0
	pub := &reports{}
	n := newNode(t, ctx, "dgxh200", 4, claimusage.WithIdleReport(0.05, pub.publish), claimusage.WithClock(func() time.Time { return now }))
	w := claim("w").Device("g", "gpu-0").Obj()
	m := claim("m").Device("m", "gpu-1-mig-1g18gb-0").Obj()
	a := claim("a").Share("s", "gpu-2-shared", "20Gi", "30", "share-a").Obj()
	busy := claim("busy").Device("g", "gpu-3").Obj()
	for _, c := range []*resourceapi.ResourceClaim{w, m, a, busy} {
		n.prepare(t, ctx, c)
	}
	n.mps.SetProcesses("a", 100)
	n.server.SetProcesses(2, nvmlmock.Process{PID: 100, MemoryUsedBytes: 5 * gib})
	n.server.SetUtilization(0, 2, 0)
	n.server.SetUtilization(3, 80, 0)
	n.server.SetMIGActivity(1, n.gpuInstance(t, "m"), nvmlmock.MIGActivity{UtilPercent: 1})

	sample := func() {
		t.Helper()
		if err := n.sampler.Sample(ctx); err != nil {
			t.Fatal(err)
		}
		now = now.Add(10 * time.Second)
	}
	sample()
	sample()
	sample() // unchanged: nothing published
	n.server.SetUtilization(0, 50, 0)
	pub.fail = true
	sample() // w busy; the publication fails
	sample() // and is tried again
	want := []map[string]time.Time{
		{"w": t0, "a": t0},
		{"w": t0, "a": t0, "m": t0.Add(10 * time.Second)},
		{"a": t0, "m": t0.Add(10 * time.Second)},
	}
	if diff := cmp.Diff(want, pub.sent); diff != "" {
		t.Errorf("reports published (-want +got):\n%s", diff)
	}
}

// TestLeaseIdleReport: the plugin's report, applied to the node's Lease,
// reads back through the controller's parser as the same report.
func TestLeaseIdleReport(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	client := fake.NewClientset()
	publish := claimusage.LeaseIdleReport(client, "tessera-system", nodeName)
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	for _, report := range []map[string]time.Time{
		{"a": t0, "b": t0.Add(time.Minute)},
		{"b": t0.Add(time.Minute)},
	} {
		if err := publish(ctx, report); err != nil {
			t.Fatal(err)
		}
		lease, err := client.CoordinationV1().Leases("tessera-system").Get(ctx, tenancyv1.IdleReportName(nodeName), metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		node, got, ok, err := tenancy.ParseIdleReport(lease)
		if err != nil || !ok || node != nodeName {
			t.Fatalf("ParseIdleReport = %q, %v, %v", node, ok, err)
		}
		want := tenancy.IdleReport{}
		for uid, at := range report {
			want[types.UID(uid)] = at
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("report read back (-want +got):\n%s", diff)
		}
	}
}
