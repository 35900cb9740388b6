package prepare

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/klog/v2/ktesting"
)

var errCrash = errors.New("simulated crash")

// crashClaims are the claims whose prepare or unprepare crashes, beside a
// claim "a" that holds a MIG partition on GPU 0 and an MPS share of GPU 1.
var crashClaims = map[string]func() *resourceapi.ResourceClaim{
	"whole":              func() *resourceapi.ResourceClaim { return makeClaim("b").Device("gpu", "gpu-2").Obj() },
	"MIG beside a":       func() *resourceapi.ResourceClaim { return makeClaim("b").Device("mig", "gpu-0-mig-1g18gb-1").Obj() },
	"MIG on a fresh GPU": func() *resourceapi.ResourceClaim { return makeClaim("b").Device("mig", "gpu-3-mig-2g35gb-2").Obj() },
	"MPS share beside a": func() *resourceapi.ResourceClaim {
		return makeClaim("b").Share("s", "gpu-1-shared", "4Gi", "25", "share-b").Obj()
	},
	"MPS share alone": func() *resourceapi.ResourceClaim {
		return makeClaim("b").Share("s", "gpu-4-shared", "8Gi", "50", "share-b").Obj()
	},
	"time-sliced share": func() *resourceapi.ResourceClaim {
		return makeClaim("b").Share("s", "gpu-4-shared", "4Gi", "25", "share-b").
			Config(resourceapi.AllocationConfigSourceClass, timeSlicingLong).Obj()
	},
	"mixed": func() *resourceapi.ResourceClaim {
		return makeClaim("b").Device("mig", "gpu-3-mig-1g18gb-6").Share("s", "gpu-1-shared", "1Gi", "10", "share-b").
			Device("gpu", "gpu-2").Obj()
	},
}

func claimA() *resourceapi.ResourceClaim {
	return makeClaim("a").Device("mig", "gpu-0-mig-1g18gb-0").Share("s", "gpu-1-shared", "2Gi", "20", "share-a").Obj()
}

// TestCrashAfterEveryStep crashes prepare and unprepare after each of their
// steps, starts a new Preparer on the same node, and checks that nothing
// leaked (MIG instances, CDI specs, MPS daemons, checkpoint entries) and
// nothing was lost (a completed claim is still served), by comparing the
// node with one where the surviving claims were prepared without a crash.
// Then the kubelet's retry and the final unprepares must leave a clean node.
func TestCrashAfterEveryStep(t *testing.T) {
	type op struct {
		name  string
		steps []Step
	}
	// The node as it is with only a, and with a and b, prepared without
	// any crash.
	_, ctx := ktesting.NewTestContext(t)
	want := map[string]nodeState{}
	for name, mkB := range crashClaims {
		for _, withB := range []bool{false, true} {
			e := newTestEnv(t, "dgxh200", 5)
			p := e.mustPreparer(ctx)
			claims := []*resourceapi.ResourceClaim{claimA()}
			if withB {
				claims = append(claims, mkB())
			}
			for _, c := range claims {
				if res := p.Prepare(ctx, c); res.Err != nil {
					t.Fatal(res.Err)
				}
			}
			want[fmt.Sprint(name, withB)] = e.state()
		}
	}
	ops := []op{{"prepare", PrepareSteps}, {"unprepare", UnprepareSteps}}
	// Every step must have crashed at least one claim, or the test proves
	// nothing about it.
	var crashed sync.Map
	t.Cleanup(func() {
		for _, o := range ops {
			for _, step := range o.steps {
				if _, ok := crashed.Load(o.name + "/" + string(step)); !ok {
					t.Errorf("no claim crashed after %s step %s", o.name, step)
				}
			}
		}
	})
	for _, o := range ops {
		for _, step := range o.steps {
			for name, mkB := range crashClaims {
				t.Run(fmt.Sprintf("%s/%s/%s", o.name, step, name), func(t *testing.T) {
					t.Parallel()
					_, ctx := ktesting.NewTestContext(t)
					e := newTestEnv(t, "dgxh200", 5)
					a, b := claimA(), mkB()
					if res := e.mustPreparer(ctx).Prepare(ctx, a); res.Err != nil {
						t.Fatal(res.Err)
					}

					var armed, fired atomic.Bool
					crashing := e.mustPreparer(ctx, WithStepHook(func(s Step) error {
						if s == step && armed.CompareAndSwap(true, false) {
							fired.Store(true)
							crashed.Store(o.name+"/"+string(s), true)
							return errCrash
						}
						return nil
					}))
					if o.name == "prepare" {
						armed.Store(true)
						crashing.Prepare(ctx, b)
					} else {
						if res := crashing.Prepare(ctx, b); res.Err != nil {
							t.Fatal(res.Err)
						}
						armed.Store(true)
						_ = crashing.Unprepare(ctx, ref(b))
					}

					// Restart on the same node.
					restarted := e.mustPreparer(ctx)
					bServed := o.name == "prepare" && (!fired.Load() || step == StepPrepareCompleted)
					if diff := cmp.Diff(want[fmt.Sprint(name, bServed)], e.state(), cmpopts.EquateEmpty()); diff != "" {
						t.Errorf("after crash at %s (fired %v) and restart (-want +got):\n%s", step, fired.Load(), diff)
					}
					// What the surviving claims were handed still validates.
					if res := restarted.Prepare(ctx, a); res.Err != nil {
						t.Fatalf("claim a after restart: %v", res.Err)
					} else {
						viewCDI(t, e.cdiRoot, res.Devices[0].CDIDeviceIDs[0])
					}

					// The kubelet retries b (prepare crashed) or its unprepare.
					if o.name == "prepare" {
						if res := restarted.Prepare(ctx, b); res.Err != nil {
							t.Fatalf("retrying prepare of b: %v", res.Err)
						}
					}
					for _, c := range []*resourceapi.ResourceClaim{a, b} {
						if err := restarted.Unprepare(ctx, ref(c)); err != nil {
							t.Fatal(err)
						}
					}
					if diff := cmp.Diff(e.cleanState(), e.state(), cmpopts.EquateEmpty()); diff != "" {
						t.Errorf("after unpreparing everything (-want +got):\n%s", diff)
					}
				})
			}
		}
	}
}

// TestConcurrentPrepareUnprepare runs 100 claims (MIG partitions, MPS
// shares of three GPUs, a whole GPU) through prepare and unprepare at once,
// twice: interleaved, then all prepared together, restarted, and all
// unprepared together. The node must end clean.
func TestConcurrentPrepareUnprepare(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	e := newTestEnv(t, "dgxh200", 8)
	p := e.mustPreparer(ctx)
	var claims []*resourceapi.ResourceClaim
	for gpu := range 4 {
		for start := range 7 {
			claims = append(claims, makeClaim(fmt.Sprintf("mig-%d-%d", gpu, start)).Device("m", fmt.Sprintf("gpu-%d-mig-1g18gb-%d", gpu, start)).Obj())
		}
	}
	for i := range 71 {
		uid := fmt.Sprintf("share-%d", i)
		claims = append(claims, makeClaim(uid).Share("s", fmt.Sprintf("gpu-%d-shared", 4+i%3), "1Gi", "1", uid).Obj())
	}
	claims = append(claims, makeClaim("whole").Device("g", "gpu-7").Obj())
	if len(claims) != 100 {
		t.Fatalf("%d claims, want 100", len(claims))
	}

	each := func(f func(c *resourceapi.ResourceClaim) error) {
		t.Helper()
		var wg sync.WaitGroup
		errs := make(chan error, len(claims))
		for _, c := range claims {
			wg.Go(func() { errs <- f(c) })
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Error(err)
			}
		}
	}
	prepare := func(p *Preparer) func(c *resourceapi.ResourceClaim) error {
		return func(c *resourceapi.ResourceClaim) error { return p.Prepare(ctx, c).Err }
	}
	unprepare := func(p *Preparer) func(c *resourceapi.ResourceClaim) error {
		return func(c *resourceapi.ResourceClaim) error { return p.Unprepare(ctx, ref(c)) }
	}

	each(func(c *resourceapi.ResourceClaim) error {
		if err := prepare(p)(c); err != nil {
			return err
		}
		return unprepare(p)(c)
	})
	if diff := cmp.Diff(e.cleanState(), e.state(), cmpopts.EquateEmpty()); diff != "" {
		t.Fatalf("after interleaved prepares and unprepares (-want +got):\n%s", diff)
	}

	each(prepare(p))
	st := e.state()
	// One MPS daemon per share claim.
	if len(st.MIG) != 28 || len(st.CDI) != 100 || len(st.Daemons) != 71 || len(st.Claims) != 100 {
		t.Fatalf("with all prepared: %d MIG instances, %d CDI specs, %d daemons, %d claims; want 28, 100, 71, 100",
			len(st.MIG), len(st.CDI), len(st.Daemons), len(st.Claims))
	}
	restarted := e.mustPreparer(ctx)
	if diff := cmp.Diff(st, e.state()); diff != "" {
		t.Fatalf("a restart changed a fully prepared node (-before +after):\n%s", diff)
	}
	each(unprepare(restarted))
	if diff := cmp.Diff(e.cleanState(), e.state(), cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("after unpreparing everything (-want +got):\n%s", diff)
	}
}

// TestLastOfConcurrentUnpreparesStopsDaemon: two MPS claims on one GPU
// torn down at the same time leave no daemon running.
func TestLastOfConcurrentUnpreparesStopsDaemon(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	e := newTestEnv(t, "dgxh200", 1)
	p := e.mustPreparer(ctx)
	for round := range 20 {
		x := makeClaim(fmt.Sprintf("x%d", round)).Share("s", "gpu-0-shared", "1Gi", "10", "x").Obj()
		y := makeClaim(fmt.Sprintf("y%d", round)).Share("s", "gpu-0-shared", "1Gi", "10", "y").Obj()
		for _, c := range []*resourceapi.ResourceClaim{x, y} {
			if res := p.Prepare(ctx, c); res.Err != nil {
				t.Fatal(res.Err)
			}
		}
		var wg sync.WaitGroup
		for _, c := range []*resourceapi.ResourceClaim{x, y} {
			wg.Go(func() {
				if err := p.Unprepare(ctx, ref(c)); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		if d := e.state().Daemons; len(d) != 0 {
			t.Fatalf("round %d: MPS daemons %v left after both claims were unprepared", round, d)
		}
	}
}
