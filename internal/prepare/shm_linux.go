package prepare

import (
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// ExecWithPrivateShm replaces the process with argv in a private mount
// namespace whose /dev/shm is shmDir. The MPS control daemon and server keep
// their shared memory in /dev/shm, and MPS clients must see the same files:
// giving every GPU's daemon its own directory, which the claim's containers
// mount at /dev/shm, shares exactly that daemon's memory with them and
// nothing else of the node's /dev/shm.
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
