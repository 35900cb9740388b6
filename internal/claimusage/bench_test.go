package claimusage_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/tessera-gpu/tessera/internal/claimusage"
	tnvml "github.com/tessera-gpu/tessera/internal/nvml"
	"github.com/tessera-gpu/tessera/internal/nvml/nvmlmock"
	"github.com/tessera-gpu/tessera/internal/pidns"
	"github.com/tessera-gpu/tessera/internal/testing/builder"
	"github.com/tessera-gpu/tessera/internal/testing/hostproc"
)

// timedTelemetry adds up the time spent in NVML's reads.
type timedTelemetry struct {
	tnvml.Telemetry
	spent atomic.Int64
}

func (t *timedTelemetry) since(start time.Time) { t.spent.Add(int64(time.Since(start))) }

func (t *timedTelemetry) GPUUsage(ctx context.Context, uuid string) (tnvml.GPUUsage, error) {
	defer t.since(time.Now())
	return t.Telemetry.GPUUsage(ctx, uuid)
}

func (t *timedTelemetry) MIGUsage(ctx context.Context, uuid string, gi int, prev *tnvml.GPMSample) (tnvml.MIGUsage, *tnvml.GPMSample, error) {
	defer t.since(time.Now())
	return t.Telemetry.MIGUsage(ctx, uuid, gi, prev)
}

func (t *timedTelemetry) Processes(ctx context.Context, uuid string, since uint64) ([]tnvml.ProcessUsage, uint64, error) {
	defer t.since(time.Now())
	return t.Telemetry.Processes(ctx, uuid, since)
}

// BenchmarkSample samples a node of 8 H200s holding 50 claims, each
// reserved for a pod of its own: 2 whole GPUs, 21 MIG instances (1g.18gb,
// 7 on each of 3 GPUs) and 27 MPS shares (9 on each of 3 GPUs, each with
// its MPS server and two clients in its pod's container), and reports the
// plugin's own CPU time per sample, NVML (mock) time aside, and the time of
// one scrape of the resulting series. The same node and claims are sampled
// side by side as a plugin in the host's PID namespace does ("sample": NVML's
// PIDs taken as they are, the servers count) and as one in its own does
// with the host's /proc ("sample-host-proc": every PID translated through a
// fake host /proc, the clients attributed by their pods' cgroups). The fake
// /proc is made under TMPDIR, on the machine's disk by default
// (TMPDIR=/dev/shm puts it on tmpfs).
//
//	go test -run '^$' -bench Sample -benchtime 2000x ./internal/claimusage/
func BenchmarkSample(b *testing.B) {
	ctx := context.Background()
	n := newNode(b, ctx, "dgxh200", 8)
	timed := &timedTelemetry{Telemetry: n.lib.(tnvml.Telemetry)}
	host := hostproc.NewFakeHostProc(b)
	pids, err := pidns.New(host.Root, pidns.WithSelfNamespace(host.Self))
	if err != nil {
		b.Fatal(err)
	}
	plain := claimusage.New(n.preparer, timed)
	hostProc := claimusage.New(n.preparer, timed, claimusage.WithHostPIDs(pids))
	pod := 0
	reserved := func(c *builder.ClaimBuilder) (*resourceapi.ResourceClaim, string) {
		pod++
		uid := fmt.Sprintf("a1b2c3d4-0000-4000-8000-%012d", pod)
		return c.ReservedFor(fmt.Sprintf("pod-%d", pod), types.UID(uid)).Obj(), uid
	}
	var claims []*resourceapi.ResourceClaim
	for gpu := range 2 {
		c, _ := reserved(claim(fmt.Sprintf("whole-%d", gpu)).Device("g", fmt.Sprintf("gpu-%d", gpu)))
		claims = append(claims, c)
	}
	for gpu := 2; gpu < 5; gpu++ {
		for start := range 7 {
			uid := fmt.Sprintf("mig-%d-%d", gpu, start)
			c, _ := reserved(claim(uid).Device("m", fmt.Sprintf("gpu-%d-mig-1g18gb-%d", gpu, start)))
			claims = append(claims, c)
		}
	}
	// Each share's MPS server runs in the plugin's namespace, under host
	// PID server and PID local there; its two clients run in its pod's
	// container, whose cgroup (systemd driver, cgroup v2) names the pod.
	const serverMemory, clientMemory = 64 << 20, 1 << 30
	type share struct {
		claim         string
		server, local int
	}
	var shares []share
	server, local, client := 100000, 100, 200000
	for gpu := 5; gpu < 8; gpu++ {
		var procs []nvmlmock.Process
		for i := range 9 {
			uid := fmt.Sprintf("share-%d-%d", gpu, i)
			c, podUID := reserved(claim(uid).Share("s", fmt.Sprintf("gpu-%d-shared", gpu), "8Gi", "10", uid))
			claims = append(claims, c)
			shares = append(shares, share{claim: uid, server: server, local: local})
			host.Add(b, server, hostproc.PluginNS, server, local)
			procs = append(procs, nvmlmock.Process{PID: uint32(server), MemoryUsedBytes: serverMemory, SMUtilPercent: 1})
			for k := range 2 {
				host.Add(b, client, hostproc.ContainerNS, client, k+1)
				host.SetCgroup(b, client, hostproc.CgroupV2(hostproc.SystemdPod(podUID, fmt.Sprintf("%064x", client))))
				procs = append(procs, nvmlmock.Process{PID: uint32(client), MemoryUsedBytes: clientMemory, SMUtilPercent: uint32(5 - 2*k)})
				client++
			}
			server++
			local++
		}
		n.server.SetProcesses(gpu, procs...)
	}
	for _, c := range claims {
		if res := n.preparer.Prepare(ctx, c); res.Err != nil {
			b.Fatal(res.Err)
		}
		plain.Prepared(c)
		hostProc.Prepared(c)
	}
	if len(n.preparer.PreparedClaims()) != 50 {
		b.Fatalf("%d claims prepared, want 50", len(n.preparer.PreparedClaims()))
	}
	// daemons makes the fake MPS control answer with each server's PID in
	// the namespace the plugin runs in: the host's, or its own.
	daemons := func(inHost bool) {
		for _, s := range shares {
			if inHost {
				n.mps.SetProcesses(s.claim, s.server)
			} else {
				n.mps.SetProcesses(s.claim, s.local)
			}
		}
	}
	for _, run := range []struct {
		name    string
		sampler *claimusage.Sampler
		inHost  bool
		// used is what each share's series must show as memory used.
		used float64
	}{
		{name: "sample", sampler: plain, inHost: true, used: serverMemory},
		{name: "sample-host-proc", sampler: hostProc, used: serverMemory + 2*clientMemory},
	} {
		daemons(run.inHost)
		// Once before timing: a path that attributes nothing would be
		// measured cheap.
		if err := run.sampler.Sample(ctx); err != nil {
			b.Fatal(err)
		}
		reg := prometheus.NewPedanticRegistry()
		reg.MustRegister(run.sampler)
		got := 0
		for key, v := range (&node{registry: reg}).scrape(b) {
			if strings.HasPrefix(key, "memory_used_bytes{") && strings.Contains(key, " share ") {
				got++
				if v != run.used {
					b.Fatalf("%s: %s = %v, want %v", run.name, key, v, run.used)
				}
			}
		}
		if got != len(shares) {
			b.Fatalf("%s: %d shares' memory used, want %d", run.name, got, len(shares))
		}
		b.Run(run.name, func(b *testing.B) {
			timed.spent.Store(0)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if err := run.sampler.Sample(ctx); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			nvml := float64(timed.spent.Load()) / float64(b.N)
			total := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
			b.ReportMetric(nvml/1e3, "nvml-µs/sample")
			b.ReportMetric((total-nvml)/1e3, "plugin-µs/sample")
		})
	}
	b.Run("scrape", func(b *testing.B) {
		reg := prometheus.NewRegistry()
		reg.MustRegister(plain)
		b.ReportAllocs()
		for range b.N {
			mfs, err := reg.Gather()
			if err != nil {
				b.Fatal(err)
			}
			if len(mfs) != 4 {
				b.Fatalf("%d metric families, want 4", len(mfs))
			}
		}
	})
}
