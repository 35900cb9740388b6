// Package hostproc makes fake host /proc trees: processes with the PID
// namespace link and the NSpid line that pidns reads, and the cgroup file
// that names a container's pod (proc(5)).
package hostproc

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// Namespace link targets as the kernel writes them: the plugin's, the host's, a
// container's.
const (
	PluginNS    = "pid:[4026532001]"
	HostNS      = "pid:[4026531836]"
	ContainerNS = "pid:[4026532077]"
)

// FakeHostProc is a host /proc in a temporary directory, with the
// plugin's own namespace link beside it (pidns.WithSelfNamespace(Self)).
type FakeHostProc struct {
	Root, Self string
}

// NewFakeHostProc makes a fake host /proc for a plugin in namespace
// PluginNS.
func NewFakeHostProc(t testing.TB) FakeHostProc {
	t.Helper()
	dir := t.TempDir()
	f := FakeHostProc{Root: filepath.Join(dir, "proc"), Self: filepath.Join(dir, "self-ns-pid")}
	if err := os.Mkdir(f.Root, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(PluginNS, f.Self); err != nil {
		t.Fatal(err)
	}
	return f
}

// Add makes process hostPID in namespace ns, whose status lists nspid.
func (f FakeHostProc) Add(t testing.TB, hostPID int, ns string, nspid ...int) {
	t.Helper()
	dir := filepath.Join(f.Root, strconv.Itoa(hostPID))
	if err := os.MkdirAll(filepath.Join(dir, "ns"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(ns, filepath.Join(dir, "ns", "pid")); err != nil {
		t.Fatal(err)
	}
	ids := make([]string, len(nspid))
	for i, p := range nspid {
		ids[i] = strconv.Itoa(p)
	}
	// The lines around NSpid as a 6.x kernel writes them.
	status := "Name:\tnvidia-cuda-mps\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t" + ids[0] + "\nNgid:\t0\nPid:\t" + ids[0] +
		"\nPPid:\t1\nNStgid:\t" + strings.Join(ids, "\t") + "\nNSpid:\t" + strings.Join(ids, "\t") + "\nNSpgid:\t1\nVmPeak:\t  10000 kB\n"
	if err := os.WriteFile(filepath.Join(dir, "status"), []byte(status), 0o644); err != nil {
		t.Fatal(err)
	}
}

// SetCgroup writes process hostPID's cgroup file (Add it first).
func (f FakeHostProc) SetCgroup(t testing.TB, hostPID int, content string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(f.Root, strconv.Itoa(hostPID), "cgroup"), []byte(content), 0o444); err != nil {
		t.Fatal(err)
	}
}

// CgroupfsPod is the cgroup path of a container of a Burstable pod under
// the kubelet's cgroupfs driver: /kubepods/burstable/pod<uid>/<container>.
func CgroupfsPod(podUID, containerID string) string {
	return "/kubepods/burstable/pod" + podUID + "/" + containerID
}

// SystemdPod is the cgroup path of a container of a Burstable pod under
// the kubelet's systemd driver with containerd, the UID's dashes escaped
// to underscores.
func SystemdPod(podUID, containerID string) string {
	slice := "kubepods-burstable-pod" + strings.ReplaceAll(podUID, "-", "_") + ".slice"
	return "/kubepods.slice/kubepods-burstable.slice/" + slice + "/cri-containerd-" + containerID + ".scope"
}

// CgroupV2 is a cgroup file on the unified hierarchy (cgroup v2): one
// line, "0::<path>".
func CgroupV2(path string) string { return "0::" + path + "\n" }

// CgroupV1 is a cgroup file on cgroup v1 hierarchies, as a 5.x kernel on a
// hybrid node writes it: the process in path in every controller's
// hierarchy, and the empty unified one at its root.
func CgroupV1(path string) string {
	var b strings.Builder
	for i, controllers := range []string{"memory", "devices", "pids", "cpu,cpuacct", "name=systemd"} {
		b.WriteString(strconv.Itoa(12-i) + ":" + controllers + ":" + path + "\n")
	}
	b.WriteString("0::/\n")
	return b.String()
}
