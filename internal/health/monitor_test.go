package health

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/klog/v2/ktesting"
	testingclock "k8s.io/utils/clock/testing"

	tnvml "github.com/tessera-gpu/tessera/internal/nvml"
	"github.com/tessera-gpu/tessera/internal/nvml/nvmlmock"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
)

type fixture struct {
	server  *nvmlmock.Server
	clock   *testingclock.FakeClock
	monitor *Monitor
}

func start(t *testing.T, policy Policy, opts ...Option) (context.Context, fixture) {
	return startGPUs(t, 4, policy, opts...)
}

// startGPUs runs a monitor on a mock node of n H200s with events enabled.
func startGPUs(t *testing.T, n int, policy Policy, opts ...Option) (context.Context, fixture) {
	t.Helper()
	return startWith(t, n, policy, func(h tnvml.Health) tnvml.Health { return h }, opts...)
}

// startWith is startGPUs with the monitor's source wrapped.
func startWith(t *testing.T, n int, policy Policy, wrap func(tnvml.Health) tnvml.Health, opts ...Option) (context.Context, fixture) {
	t.Helper()
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	s, err := nvmlmock.New("dgxh200", n, "health")
	if err != nil {
		t.Fatal(err)
	}
	s.EnableEvents()
	lib, err := tnvml.OpenMock(s)
	if err != nil {
		t.Fatal(err)
	}
	node, err := lib.Discover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	clk := testingclock.NewFakeClock(time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC))
	m := New(wrap(lib.(tnvml.Health)), node, append([]Option{WithPolicy(policy), WithClock(clk)}, opts...)...)
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	// The ticker exists once Run waits on it; events are seen once every
	// GPU is registered, each by a watcher of its own, in no set order.
	poll(t, ctx, func() bool {
		for i := range s.Devices {
			if s.XIDListeners(i) == 0 {
				return false
			}
		}
		return clk.HasWaiters()
	})
	return ctx, fixture{server: s, clock: clk, monitor: m}
}

func poll(t *testing.T, ctx context.Context, cond func() bool) {
	t.Helper()
	err := wait.PollUntilContextTimeout(ctx, 5*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) { return cond(), nil })
	if err != nil {
		t.Fatalf("condition not met: %v", err)
	}
}

// taintValues maps tainted device names to the taint's value.
func taintValues(m *Monitor) map[string]string {
	out := map[string]string{}
	for name, taints := range m.Taints() {
		for _, tn := range taints {
			if tn.Key == gpuapi.TaintKeyUnhealthy && tn.Effect == "NoSchedule" {
				out[name] = tn.Value
			}
		}
	}
	return out
}

func TestXIDTaintsEveryDeviceOfTheGPU(t *testing.T) {
	policy := Policy{IgnoredXIDs: DefaultIgnoredXIDs, RecoverAfter: time.Minute, CheckInterval: 10 * time.Second}
	ctx, f := start(t, policy)

	// An application XID on GPU 1, then a critical one on GPU 2: events
	// arrive in order, so once GPU 2 is tainted GPU 1's event was seen.
	f.server.InjectXID(1, 13, 0xFFFFFFFF, 0xFFFFFFFF)
	f.server.InjectXID(2, 79, 0xFFFFFFFF, 0xFFFFFFFF)
	poll(t, ctx, func() bool { return len(f.monitor.UnhealthyGPUs()) > 0 })
	if diff := cmp.Diff([]int{2}, f.monitor.UnhealthyGPUs()); diff != "" {
		t.Fatalf("unhealthy GPUs (-want +got):\n%s", diff)
	}
	got := taintValues(f.monitor)
	for _, name := range []string{"gpu-2", "gpu-2-shared", "gpu-2-mig-1g18gb-0", "gpu-2-mig-7g141gb-0"} {
		if got[name] != "xid-79" {
			t.Errorf("device %s taint = %q, want xid-79", name, got[name])
		}
	}
	if _, ok := got["gpu-1"]; ok {
		t.Errorf("application XID 13 tainted gpu-1")
	}
	select {
	case <-f.monitor.Changed():
	default:
		t.Error("Changed() not signalled")
	}

	// Not yet quiet long enough: the taint stays.
	f.clock.Step(policy.CheckInterval)
	f.server.InjectXID(3, 48, 0xFFFFFFFF, 0xFFFFFFFF) // a marker that the tick was handled
	poll(t, ctx, func() bool { return len(f.monitor.UnhealthyGPUs()) == 2 })
	// Quiet for RecoverAfter: both lift on the next check.
	f.clock.Step(policy.RecoverAfter)
	poll(t, ctx, func() bool { return len(f.monitor.UnhealthyGPUs()) == 0 })
}

func TestLostGPU(t *testing.T) {
	policy := Policy{CheckInterval: time.Second}
	ctx, f := start(t, policy)
	f.server.SetLost(0, true)
	f.clock.Step(time.Second)
	poll(t, ctx, func() bool { return len(f.monitor.UnhealthyGPUs()) == 1 })
	if got := taintValues(f.monitor)["gpu-0"]; got != "gpu-lost" {
		t.Errorf("gpu-0 taint = %q, want gpu-lost", got)
	}
	f.server.SetLost(0, false)
	f.clock.Step(time.Second)
	poll(t, ctx, func() bool { return len(f.monitor.UnhealthyGPUs()) == 0 })
}

func TestXIDTaintKeptWithoutRecoveryPolicy(t *testing.T) {
	ctx, f := start(t, Policy{CheckInterval: time.Second})
	f.server.InjectXID(0, 79, 0xFFFFFFFF, 0xFFFFFFFF)
	poll(t, ctx, func() bool { return len(f.monitor.UnhealthyGPUs()) == 1 })
	for range 3 {
		f.clock.Step(time.Hour)
	}
	f.server.SetLost(3, true) // marker: once GPU 3 is seen lost, the checks ran
	f.clock.Step(time.Second)
	poll(t, ctx, func() bool { return len(f.monitor.UnhealthyGPUs()) == 2 })
	if diff := cmp.Diff([]int{0, 3}, f.monitor.UnhealthyGPUs()); diff != "" {
		t.Errorf("unhealthy GPUs (-want +got):\n%s", diff)
	}
}

func TestProbe(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	p := NewProbe()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.serve(ctx, lis) }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	client := healthpb.NewHealthClient(conn)
	for _, serving := range []bool{false, true} {
		p.SetServing(serving)
		resp, err := client.Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			t.Fatal(err)
		}
		want := healthpb.HealthCheckResponse_NOT_SERVING
		if serving {
			want = healthpb.HealthCheckResponse_SERVING
		}
		if resp.GetStatus() != want {
			t.Errorf("status = %s, want %s", resp.GetStatus(), want)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Error(err)
	}
}

func TestXIDInAMIGInstanceTaintsOnlyItsDevice(t *testing.T) {
	policy := Policy{RecoverAfter: time.Minute, CheckInterval: time.Second}
	lookup := func(gpu, gi int) (string, bool) {
		if gpu == 1 && gi == 3 {
			return "gpu-1-mig-1g18gb-2", true
		}
		return "", false
	}
	ctx, f := startGPUs(t, 2, policy, WithMIGDevices(lookup))
	s, m := f.server, f.monitor

	s.InjectXID(1, 94, 3, 0)
	poll(t, ctx, func() bool { return len(m.Taints()) > 0 })
	if diff := cmp.Diff(map[string]string{"gpu-1-mig-1g18gb-2": "xid-94"}, taintValues(m)); diff != "" {
		t.Errorf("taints (-want +got):\n%s", diff)
	}
	// An XID of an instance nobody holds taints the whole GPU.
	s.InjectXID(0, 94, 9, 0)
	poll(t, ctx, func() bool { return len(m.UnhealthyGPUs()) == 1 })
	f.clock.Step(policy.RecoverAfter)
	poll(t, ctx, func() bool { return len(m.Taints()) == 0 })
}

// TestXIDOfALostGPUDoesNotStopWatching: an XID from a GPU whose UUID can
// no longer be read (it fell off the bus) does not stop XID watching for
// the other GPUs; the lost GPU is tainted by the health check.
func TestXIDOfALostGPUDoesNotStopWatching(t *testing.T) {
	policy := Policy{IgnoredXIDs: DefaultIgnoredXIDs, CheckInterval: time.Second}
	ctx, f := start(t, policy)
	f.server.SetLost(0, true)
	f.server.InjectXID(0, 79, 0xFFFFFFFF, 0xFFFFFFFF)
	f.server.InjectXID(2, 79, 0xFFFFFFFF, 0xFFFFFFFF)
	poll(t, ctx, func() bool { return taintValues(f.monitor)["gpu-2"] == "xid-79" })
	f.clock.Step(time.Second)
	poll(t, ctx, func() bool { return taintValues(f.monitor)["gpu-0"] == "gpu-lost" })
}

// countingHealth counts GPU checks, so that a test knows a check ran.
type countingHealth struct {
	tnvml.Health
	checks atomic.Int64
}

func (c *countingHealth) CheckGPU(ctx context.Context, index int) error {
	defer c.checks.Add(1)
	return c.Health.CheckGPU(ctx, index)
}

// TestFlappingGPUStaysTainted: a GPU that flaps between lost and present
// keeps its taint (one change, not one per check) until it has answered
// for RecoverAfter.
func TestFlappingGPUStaysTainted(t *testing.T) {
	policy := Policy{CheckInterval: time.Second, RecoverAfter: time.Minute}
	var counted *countingHealth
	ctx, f := startWith(t, 2, policy, func(h tnvml.Health) tnvml.Health {
		counted = &countingHealth{Health: h}
		return counted
	})
	changes := 0
	check := func() {
		t.Helper()
		before := counted.checks.Load()
		f.clock.Step(time.Second)
		poll(t, ctx, func() bool { return counted.checks.Load() >= before+2 && f.clock.HasWaiters() })
		select {
		case <-f.monitor.Changed():
			changes++
		default:
		}
	}
	for i := range 10 {
		f.server.SetLost(0, i%2 == 0)
		check()
	}
	if got := taintValues(f.monitor)["gpu-0"]; got != "gpu-lost" {
		t.Fatalf("flapping GPU's taint = %q, want gpu-lost", got)
	}
	if changes != 1 {
		t.Errorf("taints changed %d times while the GPU flapped, want once", changes)
	}
	f.server.SetLost(0, false)
	f.clock.Step(time.Minute)
	poll(t, ctx, func() bool { return len(f.monitor.UnhealthyGPUs()) == 0 })
}
