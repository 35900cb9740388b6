// Package hostproc makes fake host /proc trees: processes with the PID
// namespace link and the NSpid line that pidns reads (proc(5)).
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
