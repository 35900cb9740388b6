package pidns_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tessera-gpu/tessera/internal/pidns"
	"github.com/tessera-gpu/tessera/internal/testing/hostproc"
)

// TestLocalPIDs: a process in the plugin's namespace is found under its
// innermost PID; one in a container's namespace, one in the host's, one
// that is gone and one whose status has no NSpid line are nobody's.
func TestLocalPIDs(t *testing.T) {
	f := hostproc.NewFakeHostProc(t)
	f.Add(t, 5007, hostproc.PluginNS, 5007, 7)
	f.Add(t, 6000, hostproc.ContainerNS, 6000, 7)
	f.Add(t, 7, hostproc.HostNS, 7)
	f.Add(t, 42, hostproc.PluginNS, 42)
	if err := os.WriteFile(filepath.Join(f.Root, "42", "status"), []byte("Name:\told\nPid:\t42\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	h, err := pidns.New(f.Root, pidns.WithSelfNamespace(f.Self))
	if err != nil {
		t.Fatal(err)
	}
	tests := map[string]struct {
		hostPID uint32
		pid     int
		ok      bool
	}{
		"the plugin's":            {5007, 7, true},
		"a container's":           {6000, 0, false},
		"the host's":              {7, 0, false},
		"gone":                    {8000, 0, false},
		"a status without NSpid":  {42, 0, false},
		"PID 0 (no such process)": {0, 0, false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			pid, ok := h.Local(tc.hostPID)
			if pid != tc.pid || ok != tc.ok {
				t.Errorf("Local(%d) = %d, %v; want %d, %v", tc.hostPID, pid, ok, tc.pid, tc.ok)
			}
		})
	}
}

// TestCheck: this process's own /proc passes (it is the procfs of its own
// namespace); a directory that is no procfs, or a procfs where this process
// is not in its namespace, fails naming the root.
func TestCheck(t *testing.T) {
	if _, err := os.Readlink("/proc/self/ns/pid"); err != nil {
		t.Skipf("no PID namespace link: %v", err)
	}
	h, err := pidns.New("/proc")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Check(); err != nil {
		t.Errorf("Check of /proc: %v", err)
	}

	empty := t.TempDir()
	h, err = pidns.New(empty)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Check(); err == nil || !strings.Contains(err.Error(), empty) {
		t.Errorf("Check of an empty directory: %v, want an error naming it", err)
	}

	// A procfs-like tree in which this process runs in another namespace.
	f := hostproc.NewFakeHostProc(t)
	f.Add(t, 9000, hostproc.ContainerNS, 9000, os.Getpid())
	if err := os.Symlink("9000", filepath.Join(f.Root, "self")); err != nil {
		t.Fatal(err)
	}
	h, err = pidns.New(f.Root, pidns.WithSelfNamespace(f.Self))
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Check(); err == nil || !strings.Contains(err.Error(), f.Root) {
		t.Errorf("Check of another namespace's procfs: %v, want an error naming it", err)
	}

	// A tree whose self is in this process's namespace but is another
	// process there: not what this process reads as its host's /proc.
	f = hostproc.NewFakeHostProc(t)
	f.Add(t, 9100, hostproc.PluginNS, 9100, os.Getpid()+1)
	if err := os.Symlink("9100", filepath.Join(f.Root, "self")); err != nil {
		t.Fatal(err)
	}
	h, err = pidns.New(f.Root, pidns.WithSelfNamespace(f.Self))
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Check(); err == nil || !strings.Contains(err.Error(), f.Root) {
		t.Errorf("Check of a procfs whose self is another process: %v, want an error naming it", err)
	}
}

// TestPodUIDs: a process of a container's namespace (or the host's) is
// its pod's, as its cgroup file names it; one of the plugin's own
// namespace is left to Local even with a pod's cgroup; one whose cgroup
// file is gone, names no pod, or is too long to be read whole is nobody's.
func TestPodUIDs(t *testing.T) {
	const pod = "5f3c9a6e-1b2d-4c8e-9f01-23456789abcd"
	f := hostproc.NewFakeHostProc(t)
	for pid, ns := range map[int]string{6000: hostproc.ContainerNS, 6001: hostproc.ContainerNS, 6002: hostproc.ContainerNS, 6003: hostproc.ContainerNS, 7: hostproc.HostNS, 5007: hostproc.PluginNS} {
		f.Add(t, pid, ns, pid, 7)
	}
	f.SetCgroup(t, 6000, hostproc.CgroupV2(hostproc.SystemdPod(pod, "c1")))
	f.SetCgroup(t, 6001, hostproc.CgroupV2("/system.slice/containerd.service"))
	f.SetCgroup(t, 6003, strings.Repeat("12:memory:/"+strings.Repeat("x", 200)+"\n", 100)+hostproc.CgroupV2(hostproc.CgroupfsPod(pod, "c1")))
	f.SetCgroup(t, 7, hostproc.CgroupV1(hostproc.CgroupfsPod(pod, "c2")))
	f.SetCgroup(t, 5007, hostproc.CgroupV2(hostproc.CgroupfsPod(pod, "c3")))
	h, err := pidns.New(f.Root, pidns.WithSelfNamespace(f.Self))
	if err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		hostPID uint32
		uid     string
	}{
		"a container's":                {6000, pod},
		"a host process of a pod":      {7, pod},
		"a container's outside pods":   {6001, ""},
		"a container's without cgroup": {6002, ""},
		"a cgroup file too long":       {6003, ""},
		"the plugin's":                 {5007, ""},
		"gone":                         {8000, ""},
	} {
		t.Run(name, func(t *testing.T) {
			uid, ok := h.PodUID(tc.hostPID)
			if uid != tc.uid || ok != (tc.uid != "") {
				t.Errorf("PodUID(%d) = %q, %v; want %q, %v", tc.hostPID, uid, ok, tc.uid, tc.uid != "")
			}
		})
	}
}
