package sharing

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// maxEnviron bounds how much of a process's environment is read.
const maxEnviron = 1 << 20

// daemonProcesses returns the processes of this PID namespace that run for
// the daemon: launcher, control daemon, servers and control clients all
// carry the pipe directory the plugin gave them in their environment
// (/proc/<pid>/environ is what they were started with, written by the
// kernel, not by them later). A container's processes live in other PID
// namespaces and are never listed here.
func (m *MPSDaemons) daemonProcesses(dirs Dirs) []int {
	entries, err := os.ReadDir(m.procRoot())
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if m.runsFor(pid, dirs) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func (m *MPSDaemons) procRoot() string {
	if m.ProcRoot != "" {
		return m.ProcRoot
	}
	return "/proc"
}

// runsFor reports whether the process's environment names the daemon's
// pipe directory.
func (m *MPSDaemons) runsFor(pid int, dirs Dirs) bool {
	f, err := os.Open(filepath.Join(m.procRoot(), strconv.Itoa(pid), "environ"))
	if err != nil {
		return false
	}
	defer func() { _ = f.Close() }()
	env, err := io.ReadAll(io.LimitReader(f, maxEnviron))
	if err != nil {
		return false
	}
	want := []byte("CUDA_MPS_PIPE_DIRECTORY=" + dirs.Pipe)
	for _, kv := range bytes.Split(env, []byte{0}) {
		if bytes.Equal(kv, want) {
			return true
		}
	}
	return false
}

// killLeftovers kills the daemon's processes that outlived it (a server
// whose control daemon was killed keeps its GPU memory), and waits,
// bounded, until they are gone. Each is signalled through a pidfd opened
// before its environment is checked again, so a PID reused meanwhile is
// never signalled, and waited for through it: a pidfd turns readable when
// the process has exited, files (and GPU memory) released, while its
// environment is gone earlier, in the middle of its exit.
func (m *MPSDaemons) killLeftovers(ctx context.Context, dirs Dirs) error {
	deadline := time.Now().Add(m.timeout())
	for {
		pids := m.daemonProcesses(dirs)
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes of the MPS daemon remain: %v", pids)
		}
		for _, pid := range pids {
			if err := m.kill(ctx, pid, dirs, deadline); err != nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("processes of the MPS daemon remain: %v: %w", pids, context.Cause(ctx))
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// kill kills the process if it still runs for the daemon, and waits,
// until the deadline, for it to exit.
func (m *MPSDaemons) kill(ctx context.Context, pid int, dirs Dirs, deadline time.Time) error {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil // gone
	}
	defer func() { _ = unix.Close(fd) }()
	if !m.runsFor(pid, dirs) {
		return nil
	}
	klog.FromContext(ctx).Info("Killing a process left over by an MPS daemon", "pid", pid, "pipe", dirs.Pipe)
	if err := unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("kill leftover MPS process %d: %w", pid, err)
	}
	for {
		wait := time.Until(deadline)
		if wait <= 0 {
			return nil // reported by the caller
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, int(min(wait, 100*time.Millisecond)/time.Millisecond)+1)
		if n > 0 || (err != nil && !errors.Is(err, unix.EINTR)) {
			return nil
		}
	}
}
