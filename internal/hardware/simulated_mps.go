package hardware

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/tessera-gpu/tessera/internal/nvml/nvmlmock"
	"github.com/tessera-gpu/tessera/internal/sharing"
)

// SimulatedMPS is an in-memory MPS control. Like real daemons, its daemons
// survive a Preparer: tests hand the same SimulatedMPS to the Preparer that
// replaces a crashed one. StartErr, when set, makes Start fail.
type SimulatedMPS struct {
	mu      sync.Mutex
	daemons map[string]simulatedDaemon
	// StartErr, when set, is returned by Start.
	StartErr error
	// Root, when set, is where Start creates each daemon's directories (see
	// sharing.DaemonDirs) and Stop removes them, as real daemons have them:
	// a claim's CDI spec mounts its pipe and /dev/shm directories, and a
	// container runtime refuses a mount whose source does not exist.
	Root string
	// Clients, when set, returns the processes the GPUs run as MPS
	// daemons' clients (nvmlmock.Server.MPSClients): Processes reports each
	// as its daemon's, as a real daemon's processes are found in /proc.
	Clients func() ([]nvmlmock.MPSClient, error)
}

type simulatedDaemon struct {
	sharing.Daemon
	alive bool
	// pids are the daemon's processes (see SetProcesses).
	pids []int
}

var _ sharing.MPSControl = (*SimulatedMPS)(nil)

// NewSimulatedMPS returns a SimulatedMPS with no daemon whose daemons'
// directories are under root (none when empty).
func NewSimulatedMPS(root string) *SimulatedMPS {
	return &SimulatedMPS{daemons: map[string]simulatedDaemon{}, Root: root}
}

// Start records a live daemon; a live one is left as it is.
func (f *SimulatedMPS) Start(_ context.Context, d sharing.Daemon) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.StartErr != nil {
		return f.StartErr
	}
	if cur, ok := f.daemons[d.ID]; ok && cur.alive {
		return nil
	}
	if f.Root != "" {
		dirs := sharing.DaemonDirs(f.Root, d.ID)
		for _, dir := range []string{dirs.Pipe, dirs.Log, dirs.Shm} {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return fmt.Errorf("start MPS daemon %s: %w", d.ID, err)
			}
		}
	}
	f.daemons[d.ID] = simulatedDaemon{Daemon: d, alive: true}
	return nil
}

// Stop forgets the daemon.
func (f *SimulatedMPS) Stop(_ context.Context, id string) error {
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
func (f *SimulatedMPS) List(context.Context) (map[string]bool, error) {
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
func (f *SimulatedMPS) Kill(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if d, ok := f.daemons[id]; ok {
		d.alive = false
		f.daemons[id] = d
	}
}

// Get returns the daemon as last started.
func (f *SimulatedMPS) Get(id string) (sharing.Daemon, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d, ok := f.daemons[id]
	return d.Daemon, ok
}

// SetProcesses sets the processes of a live daemon, as its MPS server and
// clients would be; Stop forgets them with the daemon.
func (f *SimulatedMPS) SetProcesses(id string, pids ...int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if d, ok := f.daemons[id]; ok {
		d.pids = slices.Clone(pids)
		f.daemons[id] = d
	}
}

// Processes returns the processes set for each daemon, and its clients
// (see Clients). A client of a daemon that does not run, or that runs on
// another GPU than its daemon serves, is an error: the mock's telemetry
// is wrong, and the claims' series must not hide it.
func (f *SimulatedMPS) Processes(context.Context) (map[string][]int, error) {
	var clients []nvmlmock.MPSClient
	if f.Clients != nil {
		var err error
		if clients, err = f.Clients(); err != nil {
			return nil, fmt.Errorf("list the MPS daemons' clients: %w", err)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string][]int{}
	for id, d := range f.daemons {
		if len(d.pids) > 0 {
			out[id] = slices.Clone(d.pids)
		}
	}
	var errs []error
	for _, c := range clients {
		d, ok := f.daemons[c.Daemon]
		switch {
		case !ok || !d.alive:
			errs = append(errs, fmt.Errorf("PID %d on GPU %s is a client of MPS daemon %q, which does not run", c.PID, c.GPUUUID, c.Daemon))
		case d.GPUUUID != c.GPUUUID:
			errs = append(errs, fmt.Errorf("PID %d on GPU %s is a client of MPS daemon %q, which serves GPU %s", c.PID, c.GPUUUID, c.Daemon, d.GPUUUID))
		default:
			out[c.Daemon] = append(out[c.Daemon], int(c.PID))
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}
