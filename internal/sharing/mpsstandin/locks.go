package mpsstandin

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/apimachinery/pkg/util/wait"
)

// LockFile is the name of a daemon's liveness lock in its directory, as
// package sharing names it (TestLockFileNamesAgree keeps the two in step).
const LockFile = "daemon.lock"

// WaitLocksFree waits until no process holds the liveness lock of any daemon
// under root: the kernel releases a lock once every process that holds it
// has exited, which may come a moment after the processes are seen gone.
// Tests that end a plugin (its daemons with it) wait for it before they
// start the next; a lock still held after ten seconds fails the test.
func WaitLocksFree(t testing.TB, root string) {
	t.Helper()
	held := func() []string {
		entries, _ := os.ReadDir(root)
		var out []string
		for _, e := range entries {
			f, err := os.OpenFile(filepath.Join(root, e.Name(), LockFile), os.O_RDWR, 0)
			if err != nil {
				continue
			}
			err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
			_ = f.Close() // closing drops the probe's lock
			if errors.Is(err, unix.EWOULDBLOCK) {
				out = append(out, e.Name())
			}
		}
		return out
	}
	err := wait.PollUntilContextTimeout(context.Background(), 10*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		return len(held()) == 0, nil
	})
	if err != nil {
		t.Errorf("MPS daemon locks still held after their processes ended: %v", held())
	}
}
