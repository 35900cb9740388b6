package prepare

import (
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"k8s.io/klog/v2/ktesting"

	"github.com/tessera-gpu/tessera/internal/checkpoint"
)

var errDiskFull = errors.New("no space left on device")

// failingDisk fails every checkpoint write from the n-th on (counting from
// 1), as a disk that filled up would, and counts the writes it saw.
type failingDisk struct {
	from   atomic.Int64
	writes atomic.Int64
}

func (f *failingDisk) option() Option {
	return WithCheckpointOptions(checkpoint.WithSaveFault(func(*checkpoint.Checkpoint) error {
		if f.writes.Add(1) >= f.from.Load() {
			return errDiskFull
		}
		return nil
	}))
}

// TestCheckpointWriteFailsAtEveryWrite fails the checkpoint's disk from
// each write of a prepare (and then of an unprepare) on. The operation
// must fail with the disk's error and leak nothing once the disk works
// again: a MIG instance whose record could not be written is destroyed,
// and an entry whose instance was destroyed but not forgotten does not
// destroy anything else later.
func TestCheckpointWriteFailsAtEveryWrite(t *testing.T) {
	for _, name := range []string{"MIG on a fresh GPU", "MPS share alone", "mixed"} {
		mkB := crashClaims[name]
		for _, op := range []string{"prepare", "unprepare"} {
			// run sets up a node (with b prepared for an unprepare), runs
			// the operation on a disk that fails from the n-th write, and
			// returns the operation's error and how many writes it made.
			run := func(t *testing.T, e *testEnv, n int64) (*Preparer, *failingDisk, int64, error) {
				_, ctx := ktesting.NewTestContext(t)
				e.mustPreparer(ctx) // a node that has run the plugin before
				if op == "unprepare" {
					if res := e.mustPreparer(ctx).Prepare(ctx, mkB()); res.Err != nil {
						t.Fatal(res.Err)
					}
				}
				disk := &failingDisk{}
				disk.from.Store(1 << 62)
				p := e.mustPreparer(ctx, disk.option())
				base := disk.writes.Load()
				disk.from.Store(base + n)
				var err error
				if op == "prepare" {
					err = p.Prepare(ctx, mkB()).Err
				} else {
					err = p.Unprepare(ctx, ref(mkB()))
				}
				return p, disk, disk.writes.Load() - base, err
			}
			_, _, writes, err := run(t, newTestEnv(t, "dgxh200", 5), 1<<62)
			if err != nil || writes == 0 {
				t.Fatalf("%s %s on a working disk: %v after %d writes", op, name, err, writes)
			}
			for n := int64(1); n <= writes; n++ {
				for _, restart := range []bool{false, true} {
					t.Run(fmt.Sprintf("%s/%s/write %d of %d/restart %v", name, op, n, writes, restart), func(t *testing.T) {
						_, ctx := ktesting.NewTestContext(t)
						e := newTestEnv(t, "dgxh200", 5)
						p, disk, _, err := run(t, e, n)
						if !errors.Is(err, errDiskFull) {
							t.Fatalf("%s with a failing disk returned %v, want the disk's error", op, err)
						}
						// The disk works again; the kubelet retries until
						// it succeeds, in the same plugin or after a restart.
						disk.from.Store(1 << 62)
						if restart {
							p = e.mustPreparer(ctx)
						}
						b := mkB()
						if op == "prepare" {
							if res := p.Prepare(ctx, b); res.Err != nil {
								t.Fatalf("retried prepare: %v", res.Err)
							}
						}
						if err := p.Unprepare(ctx, ref(b)); err != nil {
							t.Fatalf("unprepare: %v", err)
						}
						if diff := cmp.Diff(e.cleanState(), e.state(), cmpopts.EquateEmpty()); diff != "" {
							t.Errorf("node after recovery (-want +got):\n%s", diff)
						}
					})
				}
			}
		}
	}
}

// TestMissingCheckpointWithMIGInstancesRefusesStart: a node with MIG
// instances and no checkpoint (a changed or unmounted state directory) is
// not reconciled, which would destroy the instances, unless the admin says
// so; a node without MIG instances starts and gets a checkpoint.
func TestMissingCheckpointWithMIGInstancesRefusesStart(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	e := newTestEnv(t, "dgxh200", 2)
	p := e.mustPreparer(ctx)
	if ok, err := p.store.Exists(); err != nil || !ok {
		t.Fatalf("a first start left no checkpoint: %v, %v", ok, err)
	}
	c := makeClaim("c").Device("m", "gpu-1-mig-1g18gb-0").Obj()
	if res := p.Prepare(ctx, c); res.Err != nil {
		t.Fatal(res.Err)
	}
	before := e.state()

	e.stateDir = t.TempDir() // the state directory changed
	_, err := e.preparer(ctx)
	if err == nil || !strings.Contains(err.Error(), "--allow-missing-checkpoint") || !strings.Contains(err.Error(), "GPU 1: 1") {
		t.Fatalf("start without checkpoint beside a MIG instance: %v; want a refusal naming the override and the instance", err)
	}
	got := e.state()
	if diff := cmp.Diff(before.MIG, got.MIG); diff != "" {
		t.Errorf("a refused start changed MIG instances (-before +after):\n%s", diff)
	}

	e.mustPreparer(ctx, WithMissingCheckpointAllowed())
	if st := e.state(); len(st.MIG) != 0 {
		t.Errorf("with the override, MIG instances no claim owns are destroyed; left %v", st.MIG)
	}
}

// TestTwoInstancesShareTheCheckpoint: during a rolling update an old and a
// new plugin instance serve one node. Each change happens under the state
// directory's lock on the checkpoint as the other left it, so neither
// overwrites the other's claims from a stale copy.
func TestTwoInstancesShareTheCheckpoint(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	e := newTestEnv(t, "dgxh200", 2)
	oldP := e.mustPreparer(ctx)
	a := makeClaim("a").Device("m", "gpu-0-mig-1g18gb-0").Obj()
	if res := oldP.Prepare(ctx, a); res.Err != nil {
		t.Fatal(res.Err)
	}
	newP := e.mustPreparer(ctx)
	b := makeClaim("b").Share("s", "gpu-1-shared", "1Gi", "10", "b").Obj()
	if res := newP.Prepare(ctx, b); res.Err != nil {
		t.Fatal(res.Err)
	}
	c := makeClaim("c").Device("m", "gpu-0-mig-1g18gb-1").Obj()
	if res := oldP.Prepare(ctx, c); res.Err != nil {
		t.Fatal(res.Err)
	}
	if diff := cmp.Diff([]string{"a", "b", "c"}, sortedKeys(e.state().Claims)); diff != "" {
		t.Fatalf("claims after prepares by both instances (-want +got):\n%s", diff)
	}
	// The new instance unprepares what the old one prepared, and the old
	// one what the new one prepared.
	if err := newP.Unprepare(ctx, ref(a)); err != nil {
		t.Fatal(err)
	}
	if err := oldP.Unprepare(ctx, ref(b)); err != nil {
		t.Fatal(err)
	}
	if err := newP.Unprepare(ctx, ref(c)); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(e.cleanState(), e.state(), cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("node after both instances unprepared everything (-want +got):\n%s", diff)
	}
}

// TestLostGPUDoesNotStopTheNode: a GPU that fell off the bus does not stop
// the plugin from starting; the other GPUs are prepared as before, and a
// claim on the lost GPU can be unprepared.
func TestLostGPUDoesNotStopTheNode(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	e := newTestEnv(t, "dgxh200", 3)
	p := e.mustPreparer(ctx)
	// A partition and a share cannot be on one GPU (a share is never
	// handed out in MIG mode): two GPUs are lost.
	onLost := makeClaim("lost").Device("m", "gpu-1-mig-1g18gb-0").Share("s", "gpu-2-shared", "1Gi", "10", "l").Obj()
	if res := p.Prepare(ctx, onLost); res.Err != nil {
		t.Fatal(res.Err)
	}
	e.server.SetLost(1, true)
	e.server.SetLost(2, true)

	restarted, err := e.preparer(ctx)
	if err != nil {
		t.Fatalf("start with a lost GPU: %v", err)
	}
	other := makeClaim("other").Share("s", "gpu-0-shared", "1Gi", "10", "o").Obj()
	if res := restarted.Prepare(ctx, other); res.Err != nil {
		t.Fatalf("prepare on the healthy GPU: %v", res.Err)
	}
	if res := restarted.Prepare(ctx, makeClaim("new").Device("g", "gpu-1").Obj()); res.Err == nil {
		t.Error("prepared a device of the lost GPU")
	}
	if err := restarted.Unprepare(ctx, ref(onLost)); err != nil {
		t.Fatalf("unprepare a claim on the lost GPU: %v", err)
	}
	if diff := cmp.Diff([]string{"other"}, sortedKeys(e.state().Claims)); diff != "" {
		t.Errorf("claims (-want +got):\n%s", diff)
	}
}

// TestPreparerFollowsInventory: the preparer prepares on the node as it is
// now, not as it was at start: a GPU that left takes no new claims (and
// its claims can be unprepared), one that came back takes them again.
func TestPreparerFollowsInventory(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	e := newTestEnv(t, "dgxh200", 2)
	p := e.mustPreparer(ctx)
	full, err := e.lib.Discover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	held := makeClaim("held").Device("g", "gpu-1").Obj()
	if res := p.Prepare(ctx, held); res.Err != nil {
		t.Fatal(res.Err)
	}
	without := full
	without.GPUs = full.GPUs[:1]
	p.SetInventory(without)
	if res := p.Prepare(ctx, makeClaim("new").Device("g", "gpu-1-shared").Obj()); res.Err == nil || !strings.Contains(res.Err.Error(), "not a device of this node") {
		t.Errorf("prepare on a GPU that left the node: %v, want a refusal", res.Err)
	}
	if err := p.Unprepare(ctx, ref(held)); err != nil {
		t.Errorf("unprepare a claim on a GPU that left: %v", err)
	}
	p.SetInventory(full)
	if res := p.Prepare(ctx, makeClaim("back").Share("s", "gpu-1-shared", "1Gi", "10", "b").Obj()); res.Err != nil {
		t.Errorf("prepare on a GPU that came back: %v", res.Err)
	}
}
