package sharing

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
)

// FakeMPS is an in-memory MPSControl. Like real daemons, its daemons
// survive a Preparer: tests hand the same FakeMPS to the Preparer that
// replaces a crashed one. StartErr, when set, makes Start fail.
type FakeMPS struct {
	mu      sync.Mutex
	daemons map[string]fakeDaemon
	// StartErr, when set, is returned by Start.
	StartErr error
	// Root, when set, is where Start creates each daemon's directories (see
	// DaemonDirs) and Stop removes them, as real daemons have them: a claim's
	// CDI spec mounts its pipe and /dev/shm directories, and a container
	// runtime refuses a mount whose source does not exist.
	Root string
}

type fakeDaemon struct {
	Daemon
	alive bool
	// pids are the daemon's processes (see SetProcesses).
	pids []int
}

var _ MPSControl = (*FakeMPS)(nil)

// NewFakeMPS returns a FakeMPS with no daemon.
func NewFakeMPS() *FakeMPS { return &FakeMPS{daemons: map[string]fakeDaemon{}} }

// Start records a live daemon; a live one is left as it is.
func (f *FakeMPS) Start(_ context.Context, d Daemon) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.StartErr != nil {
		return f.StartErr
	}
	if cur, ok := f.daemons[d.ID]; ok && cur.alive {
		return nil
	}
	if f.Root != "" {
		dirs := DaemonDirs(f.Root, d.ID)
		for _, dir := range []string{dirs.Pipe, dirs.Log, dirs.Shm} {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return fmt.Errorf("start MPS daemon %s: %w", d.ID, err)
			}
		}
	}
	f.daemons[d.ID] = fakeDaemon{Daemon: d, alive: true}
	return nil
}

// Stop forgets the daemon.
func (f *FakeMPS) Stop(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.daemons, id)
	if f.Root != "" {
		if err := os.RemoveAll(filepath.Join(f.Root, id)); err != nil {
			return fmt.Errorf("stop MPS daemon %s: %w", id, err)
		}
	}
	return nil
}

// List returns the daemons and whether each is alive.
func (f *FakeMPS) List(context.Context) (map[string]bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[string]bool, len(f.daemons))
	for id, d := range f.daemons {
		out[id] = d.alive
	}
	return out, nil
}

// Kill leaves the daemon dead with its directories in place, as a crashed
// daemon would.
func (f *FakeMPS) Kill(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if d, ok := f.daemons[id]; ok {
		d.alive = false
		f.daemons[id] = d
	}
}

// Get returns the daemon as last started.
func (f *FakeMPS) Get(id string) (Daemon, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d, ok := f.daemons[id]
	return d.Daemon, ok
}
