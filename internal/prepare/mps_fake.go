package prepare

import (
	"context"
	"maps"
	"slices"
	"sync"
)

// FakeMPS is an in-memory MPSControl. Like real daemons, its daemons
// survive a Preparer: tests hand the same FakeMPS to the Preparer that
// replaces a crashed one. StartErr, when set, makes Start fail.
type FakeMPS struct {
	mu       sync.Mutex
	daemons  map[string]MPSDaemon
	starts   int
	StartErr error
}

var _ MPSControl = (*FakeMPS)(nil)

// NewFakeMPS returns a FakeMPS with no daemon.
func NewFakeMPS() *FakeMPS { return &FakeMPS{daemons: map[string]MPSDaemon{}} }

// Start records a running daemon.
func (f *FakeMPS) Start(_ context.Context, d MPSDaemon) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.StartErr != nil {
		return f.StartErr
	}
	if _, ok := f.daemons[d.GPUUUID]; !ok {
		f.starts++
	}
	f.daemons[d.GPUUUID] = d
	return nil
}

// Stop forgets the daemon.
func (f *FakeMPS) Stop(_ context.Context, gpuUUID string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.daemons, gpuUUID)
	return nil
}

// Running lists the running daemons' GPUs.
func (f *FakeMPS) Running(context.Context) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Sorted(maps.Keys(f.daemons)), nil
}

// Kill makes a daemon disappear, as a crashed daemon would.
func (f *FakeMPS) Kill(gpuUUID string) { _ = f.Stop(context.Background(), gpuUUID) }

// Starts counts how many daemons were started.
func (f *FakeMPS) Starts() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.starts
}
