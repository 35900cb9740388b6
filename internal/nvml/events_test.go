package nvml

import (
	"context"
	"testing"
	"time"

	gonvml "github.com/NVIDIA/go-nvml/pkg/nvml"
	"k8s.io/klog/v2/ktesting"

	"github.com/tessera-gpu/tessera/internal/nvml/nvmlmock"
)

// watchMock starts WatchXIDs on a mock with a short re-arm backoff and
// returns the server and the events channel.
func watchMock(t *testing.T, gpus int) (*nvmlmock.Server, <-chan XIDEvent) {
	t.Helper()
	s, err := nvmlmock.New("dgxh200", gpus, t.Name())
	if err != nil {
		t.Fatal(err)
	}
	return watchMockOn(t, s)
}

func watchMockOn(t *testing.T, s *nvmlmock.Server) (*nvmlmock.Server, <-chan XIDEvent) {
	t.Helper()
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	s.EnableEvents()
	l, err := newLibrary(s, s.GpuInstanceProfileInfoV3, nil)
	if err != nil {
		t.Fatal(err)
	}
	l.watch = watchOptions{backoff: 5 * time.Millisecond, maxBackoff: 20 * time.Millisecond}
	events := make(chan XIDEvent, 64)
	done := make(chan error, 1)
	go func() { done <- l.WatchXIDs(ctx, events) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("WatchXIDs: %v", err)
		}
	})
	return s, events
}

// receiveXID injects an XID on a GPU until the watch forwards one for it
// (a watch being re-armed misses what is injected meanwhile), failing after
// a few seconds.
func receiveXID(t *testing.T, s *nvmlmock.Server, events <-chan XIDEvent, gpu int, xid uint64) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case ev := <-events:
			if ev.GPUIndex == gpu && ev.XID == xid {
				return
			}
		case <-tick.C:
			s.InjectXID(gpu, xid, noInstance, noInstance)
		case <-deadline:
			t.Fatalf("no XID %d from GPU %d: its watch is not armed", xid, gpu)
		}
	}
}

// TestXIDWatchOutlivesEventWaitErrors: nvmlEventSetWait may return
// GPU_IS_LOST or UNKNOWN (nvml.h). Neither ends the watch of another GPU,
// and the failed GPU's watch is re-armed once NVML answers again.
func TestXIDWatchOutlivesEventWaitErrors(t *testing.T) {
	s, events := watchMock(t, 3)
	for gpu := range 3 {
		receiveXID(t, s, events, gpu, 48)
	}
	s.SetLost(1, true)
	s.FailEventWait(2, gonvml.ERROR_UNKNOWN)
	receiveXID(t, s, events, 0, 79)
	receiveXID(t, s, events, 2, 79)
	s.SetLost(1, false)
	receiveXID(t, s, events, 1, 94)
}

// TestXIDRegistrationErrorIsPerGPU: one GPU whose event registration fails
// does not stop the others being watched, and is watched once it can be.
func TestXIDRegistrationErrorIsPerGPU(t *testing.T) {
	s, err := nvmlmock.New("dgxh200", 2, t.Name())
	if err != nil {
		t.Fatal(err)
	}
	s.FailEventRegistration(0, gonvml.ERROR_UNKNOWN)
	_, events := watchMockOn(t, s)
	receiveXID(t, s, events, 1, 48)
	s.FailEventRegistration(0, gonvml.SUCCESS)
	receiveXID(t, s, events, 0, 48)
}
