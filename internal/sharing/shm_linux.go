package sharing

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"runtime"

	"golang.org/x/sys/unix"
)

// ExecWithPrivateShm replaces the process with argv in a private mount
// namespace whose /dev/shm is shmDir. The MPS control daemon and server keep
// their shared memory in /dev/shm, and MPS clients must see the same files:
// giving every claim's daemon its own directory, which the claim's containers
// mount at /dev/shm, shares exactly that daemon's memory with them and
// nothing else of the node's /dev/shm (see Tmpfs).
//
// It must run as root (the plugin's DaemonSet is privileged) and only
// returns on error.
func ExecWithPrivateShm(shmDir string, argv, env []string) error {
	if len(argv) == 0 {
		return fmt.Errorf("run with private /dev/shm: no command")
	}
	// Namespaces belong to threads: stay on this one until exec.
	runtime.LockOSThread()
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
	err := unix.Exec(argv[0], argv, env)
	return fmt.Errorf("run %s with private /dev/shm: exec: %w", argv[0], err)
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
