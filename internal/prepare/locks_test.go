package prepare

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"k8s.io/klog/v2/ktesting"

	"github.com/tessera-gpu/tessera/internal/checkpoint"
	tnvml "github.com/tessera-gpu/tessera/internal/nvml"
	"github.com/tessera-gpu/tessera/pkg/inventory"
)

// hungNVML is a driver whose MIG creation hangs until released, as an NVML
// call on a wedged GPU can (NVML calls cannot be interrupted).
type hungNVML struct {
	tnvml.Library
	entered, release chan struct{}
}

func (h *hungNVML) CreateMIGDevice(ctx context.Context, gpu int, profileID int, placement inventory.Placement) (tnvml.MIGDevice, error) {
	close(h.entered)
	<-h.release
	return h.Library.CreateMIGDevice(ctx, gpu, profileID, placement)
}

// TestHungCallUnderTheStateLock: while one claim's prepare hangs in an NVML
// call, holding the node's state lock, every other operation (another
// claim's prepare and unprepare, the kubelet's retry of the hung claim)
// returns within its context's deadline with an error that says what holds
// the lock; once the call returns, the other claim prepares.
func TestHungCallUnderTheStateLock(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	e := newTestEnv(t, "dgxh200", 3)
	hung := &hungNVML{Library: e.lib, entered: make(chan struct{}), release: make(chan struct{})}
	p := e.mustPreparer(ctx, withNVML(hung))
	stuck := makeClaim("stuck").Device("mig", "gpu-1-mig-1g18gb-3").Obj()
	done := make(chan error, 1)
	go func() { done <- p.Prepare(ctx, stuck).Err }()
	<-hung.entered

	const deadline = 200 * time.Millisecond
	other := makeClaim("other").Device("gpu", "gpu-2").Obj()
	tests := map[string]struct {
		call     func(context.Context) error
		mentions []string
	}{
		"another claim's prepare": {
			call:     func(ctx context.Context) error { return p.Prepare(ctx, other).Err },
			mentions: []string{"prepare claim other", checkpoint.ErrLockTimeout.Error(), "held in this instance", "prepare claim stuck"},
		},
		"another claim's unprepare": {
			call:     func(ctx context.Context) error { return p.Unprepare(ctx, ref(other)) },
			mentions: []string{"unprepare claim other", checkpoint.ErrLockTimeout.Error(), "prepare claim stuck"},
		},
		"the hung claim's retry": {
			call:     func(ctx context.Context) error { return p.Prepare(ctx, stuck).Err },
			mentions: []string{"claim stuck: an earlier operation on it is still running"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(ctx, deadline)
			defer cancel()
			start := time.Now()
			err := tc.call(ctx)
			took := time.Since(start)
			if err == nil {
				t.Fatal("succeeded while the state lock is held")
			}
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("error %q does not wrap the context's deadline", err)
			}
			for _, m := range tc.mentions {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q does not say %q", err, m)
				}
			}
			if took > deadline+2*time.Second {
				t.Errorf("returned after %v, deadline %v", took, deadline)
			}
		})
	}

	close(hung.release)
	if err := <-done; err != nil {
		t.Fatalf("the hung prepare, once its call returned: %v", err)
	}
	if err := p.Prepare(ctx, other).Err; err != nil {
		t.Errorf("prepare once the lock is free: %v", err)
	}
}

// TestCheckpointedClaimsFollowTheDisk: an instance that serves no call still
// answers from the checkpoint as another instance (a rolling update) left it
// on disk, and notices that it changed.
func TestCheckpointedClaimsFollowTheDisk(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	e := newTestEnv(t, "dgxh200", 2)
	old := e.mustPreparer(ctx)
	next := e.mustPreparer(ctx)
	claim := makeClaim("c").Device("gpu", "gpu-1").Obj()
	if err := next.Prepare(ctx, claim).Err; err != nil {
		t.Fatal(err)
	}
	prepared := func() (map[string]bool, error) {
		devices, release, err := old.PreparedDevices(ctx)
		if err == nil {
			release()
		}
		return devices, err
	}
	if !old.CheckpointChanged() {
		t.Error("CheckpointChanged = false after the other instance prepared")
	}
	if devices, err := prepared(); err != nil || !devices["gpu-1"] {
		t.Errorf("prepared by the other instance: PreparedDevices = %v, %v; want gpu-1", devices, err)
	}
	if claims, err := old.CheckpointedClaims(ctx); err != nil || len(claims) != 1 || claims[0].UID != claim.UID {
		t.Errorf("prepared by the other instance: CheckpointedClaims = %v, %v; want %s", claims, err, claim.UID)
	}
	if old.CheckpointChanged() {
		t.Error("CheckpointChanged = true right after a reread")
	}
	if err := next.Unprepare(ctx, ref(claim)); err != nil {
		t.Fatal(err)
	}
	if devices, err := prepared(); err != nil || len(devices) != 0 {
		t.Errorf("unprepared by the other instance: PreparedDevices = %v, %v; want none", devices, err)
	}
}

// TestPublicationHoldsTheCheckpoint: while a publication computed from the
// prepared devices is on its way (until release), no instance changes the
// checkpoint: the other instance's unprepare waits for it, within its
// context, and goes ahead once it is released.
func TestPublicationHoldsTheCheckpoint(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	e := newTestEnv(t, "dgxh200", 2)
	old := e.mustPreparer(ctx)
	next := e.mustPreparer(ctx)
	claim := makeClaim("c").Device("gpu", "gpu-1").Obj()
	if err := next.Prepare(ctx, claim).Err; err != nil {
		t.Fatal(err)
	}
	devices, release, err := old.PreparedDevices(ctx)
	if err != nil || !devices["gpu-1"] {
		t.Fatalf("PreparedDevices = %v, %v; want gpu-1", devices, err)
	}
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if err := next.Unprepare(short, ref(claim)); !errors.Is(err, checkpoint.ErrLockTimeout) {
		t.Errorf("unprepare while a publication holds the checkpoint = %v, want ErrLockTimeout", err)
	}
	// A second reader (the other instance's publication) is not held up.
	if _, again, err := next.PreparedDevices(short); err != nil {
		t.Errorf("a second publication's read: %v", err)
	} else {
		again()
	}
	release()
	if err := next.Unprepare(ctx, ref(claim)); err != nil {
		t.Errorf("unprepare once the publication is done: %v", err)
	}
}
