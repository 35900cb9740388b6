package sharing

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"k8s.io/klog/v2/ktesting"
)

// TestProcessesByDaemon: each process is put under the daemon whose pipe
// directory its environment names, and only a pipe directory of a daemon
// under the root counts: one elsewhere (a container's mount path), one
// reached through "..", or a bare root is nobody's.
func TestProcessesByDaemon(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	root := filepath.Join(t.TempDir(), "mps")
	proc := t.TempDir()
	m := &MPSDaemons{Root: root, ProcRoot: proc}
	write := func(pid int, env ...string) {
		dir := filepath.Join(proc, strconv.Itoa(pid))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "environ"), []byte(strings.Join(env, "\x00")+"\x00"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(100, "PATH=/bin", "CUDA_MPS_PIPE_DIRECTORY="+DaemonDirs(root, "claim-a").Pipe)
	write(101, "CUDA_MPS_PIPE_DIRECTORY="+DaemonDirs(root, "claim-a").Pipe, "HOME=/")
	write(200, "CUDA_MPS_PIPE_DIRECTORY="+DaemonDirs(root, "claim-b").Pipe)
	write(300, "CUDA_MPS_PIPE_DIRECTORY=/var/run/mps/pipe")
	write(301, "CUDA_MPS_PIPE_DIRECTORY="+root+"/claim-a/../claim-b/pipe")
	write(302, "CUDA_MPS_PIPE_DIRECTORY="+root+"/pipe")
	write(303, "PATH=/bin")
	if err := os.MkdirAll(filepath.Join(proc, "self"), 0o755); err != nil {
		t.Fatal(err)
	}

	got, err := m.Processes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]int{"claim-a": {100, 101}, "claim-b": {200}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// BenchmarkProcesses lists the processes of 50 claims' daemons (launcher,
// control daemon and server each) in a PID namespace of 160 processes, as
// the per-claim metrics do once a sample on a node with 50 MPS claims.
//
//	go test -run '^$' -bench Processes ./internal/sharing/
func BenchmarkProcesses(b *testing.B) {
	ctx := context.Background()
	root := filepath.Join(b.TempDir(), "mps")
	proc := b.TempDir()
	m := &MPSDaemons{Root: root, ProcRoot: proc}
	pid := 100
	write := func(env string) {
		dir := filepath.Join(proc, strconv.Itoa(pid))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			b.Fatal(err)
		}
		// A real environment is a few KiB.
		env = strings.Repeat("X=0123456789012345678901234567890123456789\x00", 60) + env + "\x00"
		if err := os.WriteFile(filepath.Join(dir, "environ"), []byte(env), 0o644); err != nil {
			b.Fatal(err)
		}
		pid++
	}
	for i := range 50 {
		for range 3 {
			write("CUDA_MPS_PIPE_DIRECTORY=" + DaemonDirs(root, fmt.Sprintf("claim-%d", i)).Pipe)
		}
	}
	for range 10 {
		write("PATH=/bin")
	}
	b.ReportAllocs()
	for range b.N {
		got, err := m.Processes(ctx)
		if err != nil || len(got) != 50 {
			b.Fatalf("%d daemons, %v", len(got), err)
		}
	}
}
