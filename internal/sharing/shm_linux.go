package sharing

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// LockFD is the descriptor on which the plugin hands the launcher the
// daemon's lock, taken exclusively (see MPSDaemons.Start).
const LockFD = 3

// Launch runs argv (nvidia-cuda-mps-control -f) as a child and holds the
// daemon's liveness lock, inherited on LockFD, until the child exits: the
// plugin, and any other plugin instance, knows the daemon is alive while
// the lock is held, without any PID (see lockFile). The child dies with the
// launcher (its parent death signal), so a held lock always means a
// running daemon; the child does not inherit the lock, so a server it
// leaves behind cannot hold it.
//
// With shmDir, the child runs in a private mount namespace whose /dev/shm
// is shmDir. The MPS control daemon and server keep their shared memory in
// /dev/shm, and MPS clients must see the same files: giving every claim's
// daemon its own directory, which the claim's containers mount at
// /dev/shm, shares exactly that daemon's memory with them and nothing else
// of the node's /dev/shm (see Tmpfs). That needs root (the plugin's
// DaemonSet is privileged).
//
// When the child has exited, or on SIGTERM, the launcher kills its process
// group if it leads one (the plugin starts it in a session of its own):
// the daemon's servers go with it. Launch returns the child's error.
func Launch(shmDir string, argv, env []string) error {
	if len(argv) == 0 {
		return fmt.Errorf("launch MPS daemon: no command")
	}
	// Namespaces belong to threads, and a parent death signal fires when
	// the thread that started the child ends: start it from this thread,
	// which stays until the process ends.
	runtime.LockOSThread()
	if shmDir != "" {
		if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
			return fmt.Errorf("run %s with private /dev/shm: unshare mount namespace: %w", argv[0], err)
		}
		// Keep the bind mount from propagating back to the node.
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			return fmt.Errorf("run %s with private /dev/shm: make mounts private: %w", argv[0], err)
		}
		if err := unix.Mount(shmDir, "/dev/shm", "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("run %s with private /dev/shm: bind %s: %w", argv[0], shmDir, err)
		}
	}
	// Absent when the launcher is run by hand.
	_, _ = unix.FcntlInt(LockFD, unix.F_SETFD, unix.FD_CLOEXEC)
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, unix.SIGTERM, unix.SIGINT)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("launch %s: %w", argv[0], err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-signals:
		_ = cmd.Process.Kill()
		err = <-done
	}
	if unix.Getpgrp() == os.Getpid() {
		// The lock goes with this process.
		_ = unix.Kill(0, unix.SIGKILL)
	}
	return err
}

// Tmpfs mounts each daemon's /dev/shm as a tmpfs of its own: in memory,
// never on the state directory's disk, sized, and shared only by the daemon
// and the containers of its claim. The state directory's mount must
// propagate to the host (Bidirectional) for containers to see it.
type Tmpfs struct{}

var _ ShmMounter = Tmpfs{}

// Mount mounts a tmpfs of sizeBytes on dir unless dir is a mount point.
func (Tmpfs) Mount(dir string, sizeBytes int64) error {
	mounted, err := isMountPoint(dir)
	if err != nil || mounted {
		return err
	}
	opts := fmt.Sprintf("size=%d,mode=1777", sizeBytes)
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, opts); err != nil {
		return fmt.Errorf("mount tmpfs (%s) on %s: %w", opts, dir, err)
	}
	return nil
}

// Unmount detaches whatever is mounted on dir; containers that still use
// it keep their own view until they stop.
func (Tmpfs) Unmount(dir string) error {
	mounted, err := isMountPoint(dir)
	if errors.Is(err, fs.ErrNotExist) || (err == nil && !mounted) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
		return fmt.Errorf("unmount %s: %w", dir, err)
	}
	return nil
}

// isMountPoint reports whether dir is on another device than its parent.
func isMountPoint(dir string) (bool, error) {
	var st, parent unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		return false, &fs.PathError{Op: "stat", Path: dir, Err: err}
	}
	if err := unix.Lstat(filepath.Dir(dir), &parent); err != nil {
		return false, &fs.PathError{Op: "stat", Path: filepath.Dir(dir), Err: err}
	}
	return st.Dev != parent.Dev, nil
}
