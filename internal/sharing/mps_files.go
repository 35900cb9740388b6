package sharing

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"

	"golang.org/x/sys/unix"
)

// The daemon's liveness is a lock, not a PID: the launcher holds an
// exclusive flock on <id>/daemon.lock for exactly as long as the daemon
// runs (see Launch). A flock is held by an open file on the node's file
// system, so every plugin instance sees it, whatever PID namespace
// started the daemon (PIDs mean nothing across a rolling update's two
// instances); it lives in the daemon's own directory, which no container
// mounts; and the kernel releases it when the launcher dies, so no stale
// state survives a crash.
const lockFile = "daemon.lock"

// controlSocket is the daemon's socket in its pipe directory:
// "nvidia-cuda-mps-control(1): the control daemon ... CUDA_MPS_PIPE_DIRECTORY
// ... clients connect to it".
const controlSocket = "control"

// maxPipeEntries bounds how many names of a pipe directory the plugin
// looks at: the directory is a tenant's, who could fill it with millions.
// A daemon makes a handful.
const maxPipeEntries = 256

func lockPath(dirs Dirs) string { return filepath.Join(filepath.Dir(dirs.Pipe), lockFile) }

// alive reports whether some launcher holds the daemon's lock. It probes
// with a shared lock, so that two probes never look like a daemon to each
// other, while a launcher's exclusive lock refuses them.
func (m *MPSDaemons) alive(dirs Dirs) bool {
	f, err := os.OpenFile(lockPath(dirs), os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return false
	}
	defer func() { _ = f.Close() }()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); err != nil {
		return errors.Is(err, unix.EWOULDBLOCK)
	}
	return false
}

// acquire takes the daemon's lock exclusively, for the launcher to hold,
// or reports that a live daemon's launcher holds it. A liveness probe's
// shared lock (another instance's List) only delays it.
func (m *MPSDaemons) acquire(ctx context.Context, dirs Dirs) (*os.File, bool, error) {
	f, err := os.OpenFile(lockPath(dirs), os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0o600)
	if err != nil {
		return nil, false, fmt.Errorf("open MPS daemon lock: %w", err)
	}
	fd := int(f.Fd())
	deadline := time.Now().Add(m.timeout())
	for {
		err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return f, false, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			_ = f.Close()
			return nil, false, fmt.Errorf("lock MPS daemon: %w", err)
		}
		// Busy: a shared lock succeeding means only probes hold it.
		if err := unix.Flock(fd, unix.LOCK_SH|unix.LOCK_NB); err != nil {
			_ = f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, true, nil
			}
			return nil, false, fmt.Errorf("lock MPS daemon: %w", err)
		}
		_ = unix.Flock(fd, unix.LOCK_UN)
		if time.Now().After(deadline) {
			_ = f.Close()
			return nil, false, errors.New("lock MPS daemon: liveness probes held its lock past the timeout")
		}
		select {
		case <-ctx.Done():
			_ = f.Close()
			return nil, false, fmt.Errorf("lock MPS daemon: %w", context.Cause(ctx))
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// openPipeDir opens a daemon's pipe directory itself, never a link in its
// place (the pipe directory's parent is the plugin's, so this is belt and
// braces).
func openPipeDir(dir string) (*os.File, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	return os.NewFile(uintptr(fd), dir), nil
}

// pipeNames returns at most maxPipeEntries names of the pipe directory.
func pipeNames(dir *os.File) ([]string, error) {
	names, err := dir.Readdirnames(maxPipeEntries)
	if errors.Is(err, io.EOF) {
		err = nil
	}
	return names, err
}

// clearStale removes a dead daemon's files from its pipe directory and
// keeps the directory, which containers may have mounted. Files are
// unlinked, never opened or followed; subdirectories (none of MPS's) are
// left alone.
func clearStale(pipe string) error {
	dir, err := openPipeDir(pipe)
	if err != nil {
		return fmt.Errorf("clear stale MPS files: %w", err)
	}
	defer func() { _ = dir.Close() }()
	for range 64 { // each round removes up to maxPipeEntries names
		names, err := pipeNames(dir)
		if err != nil {
			return fmt.Errorf("clear stale MPS files in %s: %w", pipe, err)
		}
		if len(names) == 0 {
			return nil
		}
		for _, name := range names {
			if err := unix.Unlinkat(int(dir.Fd()), name, 0); err != nil && !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("clear stale MPS file %s in %s: %w", name, pipe, err)
			}
		}
	}
	return nil
}

// linkControl makes a private directory, in the daemon's own directory,
// holding hard links to the sockets, FIFOs and plain files of the pipe
// directory, and returns it for a control client to use as its
// CUDA_MPS_PIPE_DIRECTORY. link(2) links the name itself, a symlink as a
// symlink, and the links are then checked where no container can change
// them, so that a client never follows a link a container planted (e.g.
// "control" pointing at another claim's socket) and never sees what was
// swapped in after the check.
func linkControl(dirs Dirs) (string, func(), error) {
	private, err := os.MkdirTemp(filepath.Dir(dirs.Pipe), "client-")
	if err != nil {
		return "", nil, err
	}
	cleanup := func() { _ = os.RemoveAll(private) }
	if err := linkEntries(dirs.Pipe, private); err != nil {
		cleanup()
		return "", nil, err
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(private, controlSocket), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		cleanup()
		return "", nil, fmt.Errorf("no control socket in %s", dirs.Pipe)
	}
	return private, cleanup, nil
}

func linkEntries(pipe, private string) error {
	dir, err := openPipeDir(pipe)
	if err != nil {
		return err
	}
	defer func() { _ = dir.Close() }()
	to, err := openPipeDir(private)
	if err != nil {
		return err
	}
	defer func() { _ = to.Close() }()
	names, err := pipeNames(dir)
	if err != nil {
		return fmt.Errorf("read %s: %w", pipe, err)
	}
	// The control socket by name, however many names a container added.
	if !slices.Contains(names, controlSocket) {
		names = append(names, controlSocket)
	}
	for _, name := range names {
		if err := unix.Linkat(int(dir.Fd()), name, int(to.Fd()), name, 0); err != nil {
			continue // a directory, or gone meanwhile
		}
		var st unix.Stat_t
		if err := unix.Fstatat(int(to.Fd()), name, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil {
			switch st.Mode & unix.S_IFMT {
			case unix.S_IFSOCK, unix.S_IFIFO, unix.S_IFREG:
				continue
			}
		}
		// A symlink or a device node: the client gets none.
		if err := unix.Unlinkat(int(to.Fd()), name, 0); err != nil {
			return fmt.Errorf("drop %s from the private MPS directory: %w", name, err)
		}
	}
	return nil
}

// probeControl connects, bounded, to the daemon's control socket through a
// private link and hangs up.
func probeControl(dirs Dirs) error {
	private, cleanup, err := linkControl(dirs)
	if err != nil {
		return err
	}
	defer cleanup()
	conn, err := net.DialTimeout("unix", filepath.Join(private, controlSocket), time.Second)
	if err != nil {
		return err
	}
	return conn.Close()
}
