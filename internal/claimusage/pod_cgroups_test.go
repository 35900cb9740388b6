package claimusage_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/klog/v2/ktesting"

	"github.com/tessera-gpu/tessera/internal/claimusage"
	"github.com/tessera-gpu/tessera/internal/nvml/nvmlmock"
	"github.com/tessera-gpu/tessera/internal/pidns"
	"github.com/tessera-gpu/tessera/internal/testing/hostproc"
)

// Pod UIDs as the API server makes them (RFC 4122), which the kubelet
// names pods' cgroups after.
const (
	podA  = "a1b2c3d4-0000-4000-8000-00000000000a"
	podB  = "a1b2c3d4-0000-4000-8000-00000000000b"
	podC  = "a1b2c3d4-0000-4000-8000-00000000000c"
	podT  = "a1b2c3d4-0000-4000-8000-00000000000e"
	podW  = "a1b2c3d4-0000-4000-8000-00000000000f"
	timed = `{"apiVersion":"config.gpu.tessera.dev/v1alpha1","kind":"GPUConfig","sharing":{"strategy":"TimeSlicing","timeSlicing":{"interval":"Long"}}}`
)

// TestSharesCountTheirPodsProcesses: with the host's /proc, NVML's
// processes of other PID namespaces (MPS clients and time-sliced
// processes in the tenants' containers) count for the share their pod
// holds of that GPU, by the pod UID in their cgroup file, cgroupfs and
// systemd driver paths on cgroup v2 and v1 alike, on top of the MPS
// daemon's own processes. A process of a pod with no share of the GPU (it
// holds a whole GPU), one whose cgroup file is gone, one of no pod, and
// those of a pod that holds two shares of the GPU count for nobody.
func TestSharesCountTheirPodsProcesses(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	host := hostproc.NewFakeHostProc(t)
	// The MPS server of claim a, in the plugin's namespace.
	host.Add(t, 5007, hostproc.PluginNS, 5007, 7)
	for pid, path := range map[int]string{
		6100: hostproc.CgroupV2(hostproc.SystemdPod(podA, "c1")),
		6101: hostproc.CgroupV1(hostproc.CgroupfsPod(podA, "c2")),
		6200: hostproc.CgroupV2(hostproc.CgroupfsPod(podB, "c3")),
		6201: hostproc.CgroupV1(hostproc.SystemdPod(podB, "c4")),
		6300: hostproc.CgroupV2(hostproc.CgroupfsPod(podW, "c5")),
		6400: "", // gone by the time its cgroup is read
		6500: hostproc.CgroupV2("/system.slice/containerd.service"),
		6600: hostproc.CgroupV2(hostproc.SystemdPod(podC, "c6")),
		6700: hostproc.CgroupV2(hostproc.CgroupfsPod(podT, "c7")),
	} {
		host.Add(t, pid, hostproc.ContainerNS, pid, 1)
		if path != "" {
			host.SetCgroup(t, pid, path)
		}
	}
	pids, err := pidns.New(host.Root, pidns.WithSelfNamespace(host.Self))
	if err != nil {
		t.Fatal(err)
	}
	n := newNode(t, ctx, "dgxh200", 4, claimusage.WithHostPIDs(pids))
	a := claim("a").Share("s", "gpu-2-shared", "20Gi", "30", "share-a").ReservedFor("pod-a", podA).Obj()
	b := claim("b").Share("s", "gpu-2-shared", "8Gi", "50", "share-b").ReservedFor("pod-b", podB).Obj()
	w := claim("w").Device("g", "gpu-0").ReservedFor("pod-w", podW).Obj()
	// Pod c holds two shares of GPU 3: its processes are neither's.
	c1 := claim("c1").Share("s", "gpu-3-shared", "10Gi", "20", "share-c1").ReservedFor("pod-c", podC).Obj()
	c2 := claim("c2").Share("s", "gpu-3-shared", "10Gi", "20", "share-c2").ReservedFor("pod-c", podC).Obj()
	tc := claim("t").Share("s", "gpu-1-shared", "16Gi", "40", "share-t").Config(resourceapi.AllocationConfigSourceClass, timed).ReservedFor("pod-t", podT).Obj()
	for _, c := range []*resourceapi.ResourceClaim{a, b, w, c1, c2, tc} {
		n.prepare(t, ctx, c)
	}
	inv, err := n.lib.Discover(ctx)
	if err != nil {
		t.Fatal(err)
	}

	n.mps.SetProcesses("a", 7)
	n.server.SetProcesses(2,
		nvmlmock.Process{PID: 5007, MemoryUsedBytes: 1 * gib, SMUtilPercent: 1},
		nvmlmock.Process{PID: 6100, MemoryUsedBytes: 4 * gib, SMUtilPercent: 20},
		nvmlmock.Process{PID: 6101, MemoryUsedBytes: 2 * gib, SMUtilPercent: 5},
		nvmlmock.Process{PID: 6200, MemoryUsedBytes: 3 * gib, SMUtilPercent: 30},
		nvmlmock.Process{PID: 6201, MemoryUsedBytes: 1 * gib, SMUtilPercent: 15},
		nvmlmock.Process{PID: 6300, MemoryUsedBytes: 7 * gib, SMUtilPercent: 40},
		nvmlmock.Process{PID: 6400, MemoryUsedBytes: 9 * gib, SMUtilPercent: 9},
		nvmlmock.Process{PID: 6500, MemoryUsedBytes: 9 * gib, SMUtilPercent: 9})
	n.server.SetProcesses(3, nvmlmock.Process{PID: 6600, MemoryUsedBytes: 5 * gib, SMUtilPercent: 50})
	n.server.SetProcesses(1, nvmlmock.Process{PID: 6700, MemoryUsedBytes: 6 * gib, SMUtilPercent: 25})
	if err := n.sampler.Sample(ctx); err != nil {
		t.Fatal(err)
	}
	share := func(c, pod string, gpu int) string {
		return fmt.Sprintf("{ns-%s/claim-%[1]s pod=%s s gpu-%d-shared share uuid=%s profile= gpu=%[4]s/}", c, pod, gpu, inv.GPUs[gpu].UUID)
	}
	sa, sb, sc1, sc2, st := share("a", "pod-a", 2), share("b", "pod-b", 2), share("c1", "pod-c", 3), share("c2", "pod-c", 3), share("t", "pod-t", 1)
	want := map[string]float64{
		"utilization_ratio" + sa: 0.26, "memory_used_bytes" + sa: 7 * gib, "memory_limit_bytes" + sa: 20 * gib,
		"utilization_ratio" + sb: 0.45, "memory_used_bytes" + sb: 4 * gib, "memory_limit_bytes" + sb: 8 * gib,
		"utilization_ratio" + sc1: 0, "memory_used_bytes" + sc1: 0, "memory_limit_bytes" + sc1: 10 * gib,
		"utilization_ratio" + sc2: 0, "memory_used_bytes" + sc2: 0, "memory_limit_bytes" + sc2: 10 * gib,
		"utilization_ratio" + st: 0.25, "memory_used_bytes" + st: 6 * gib, "memory_limit_bytes" + st: 16 * gib,
	}
	got := n.scrape(t)
	for key := range got {
		if !strings.Contains(key, " share ") {
			delete(got, key) // the whole GPU's own series
		}
	}
	if diff := cmp.Diff(want, got, approx); diff != "" {
		t.Errorf("series (-want +got):\n%s", diff)
	}
}

// TestTimeSlicedSharesAreNeverIdle: with the host's /proc, a time-sliced
// share's usage is shown, but a share whose pod's processes are at 0 % is
// not reported idle, as a process its cgroup did not name would read as
// idle too; an MPS share whose pod's client is at 0 % is.
func TestTimeSlicedSharesAreNeverIdle(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	host := hostproc.NewFakeHostProc(t)
	host.Add(t, 6700, hostproc.ContainerNS, 6700, 1)
	host.SetCgroup(t, 6700, hostproc.CgroupV2(hostproc.CgroupfsPod(podT, "c7")))
	host.Add(t, 6100, hostproc.ContainerNS, 6100, 1)
	host.SetCgroup(t, 6100, hostproc.CgroupV2(hostproc.CgroupfsPod(podA, "c1")))
	pids, err := pidns.New(host.Root, pidns.WithSelfNamespace(host.Self))
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	pub := &reports{}
	n := newNode(t, ctx, "dgxh200", 4, claimusage.WithHostPIDs(pids),
		claimusage.WithIdleReport(0.05, pub.publish), claimusage.WithClock(func() time.Time { return t0 }))
	n.prepare(t, ctx, claim("t").Share("s", "gpu-1-shared", "16Gi", "40", "share-t").Config(resourceapi.AllocationConfigSourceClass, timed).ReservedFor("pod-t", podT).Obj())
	n.prepare(t, ctx, claim("a").Share("s", "gpu-2-shared", "20Gi", "30", "share-a").ReservedFor("pod-a", podA).Obj())
	n.server.SetProcesses(1, nvmlmock.Process{PID: 6700, MemoryUsedBytes: 6 * gib})
	n.server.SetProcesses(2, nvmlmock.Process{PID: 6100, MemoryUsedBytes: 2 * gib})
	if err := n.sampler.Sample(ctx); err != nil {
		t.Fatal(err)
	}
	inv, err := n.lib.Discover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st := fmt.Sprintf("{ns-t/claim-t pod=pod-t s gpu-1-shared share uuid=%s profile= gpu=%[1]s/}", inv.GPUs[1].UUID)
	if got := n.scrape(t)["memory_used_bytes"+st]; got != 6*gib {
		t.Errorf("time-sliced share's memory used = %v, want %v", got, 6*gib)
	}
	want := []map[string]time.Time{{"a": t0}}
	if diff := cmp.Diff(want, pub.sent); diff != "" {
		t.Errorf("reports published (-want +got):\n%s", diff)
	}
}
