package prepare

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"k8s.io/client-go/tools/events"
	"k8s.io/klog/v2/ktesting"
)

// TestMIGModeOffEvents: a deferred MIG-off is a Warning Event about the
// node, once however often the retry fails, and its success a Normal one.
func TestMIGModeOffEvents(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	e := newTestEnv(t, "dgxh200", 1)
	rec := events.NewFakeRecorder(100)
	p := e.mustPreparer(ctx, WithEvents(rec))
	c := makeClaim("a").Device("m", "gpu-0-mig-1g18gb-0").Obj()
	if res := p.Prepare(ctx, c); res.Err != nil {
		t.Fatal(res.Err)
	}
	e.server.SetBusy(0, true)
	if err := p.Unprepare(ctx, ref(c)); err != nil {
		t.Fatal(err)
	}
	p.RetryMIGModeOff(ctx)
	if diff := cmp.Diff([]string{"Warning " + ReasonMIGModeOffDeferred}, drain(rec)); diff != "" {
		t.Errorf("Events while the GPU is busy (-want +got):\n%s", diff)
	}
	e.server.SetBusy(0, false)
	if left := p.RetryMIGModeOff(ctx); len(left) != 0 {
		t.Fatalf("retry on an idle GPU left %v", left)
	}
	if diff := cmp.Diff([]string{"Normal " + ReasonMIGModeOff}, drain(rec)); diff != "" {
		t.Errorf("Events once switched off (-want +got):\n%s", diff)
	}
}

// TestEventsRegardTheNode: Events are about the plugin's Node.
func TestEventsRegardTheNode(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	e := newTestEnv(t, "dgxh200", 1)
	rec := events.NewFakeRecorder(10)
	rec.Verbose = true
	p := e.mustPreparer(ctx, WithEvents(rec))
	p.event("Normal", "Test", "Test", "note")
	select {
	case got := <-rec.Events:
		if want := "Normal Test Test note {kind=Node,apiVersion=v1}"; got != want {
			t.Errorf("event %q, want %q", got, want)
		}
	default:
		t.Error("no Event recorded")
	}
}
