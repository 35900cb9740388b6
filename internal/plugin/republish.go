package plugin

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// unprepareRepublishTimeout bounds how long an unprepare waits for the
// slices to follow it; the publication steps themselves wait at most
// storedTimeout each.
const unprepareRepublishTimeout = 10 * time.Second

// republishTracker numbers republish requests and records which of them a
// finished publication covered, so that a caller can wait for its own.
type republishTracker struct {
	mu        sync.Mutex
	requested uint64
	covered   uint64
	changed   chan struct{}
}

// ask records a request and returns its number.
func (r *republishTracker) ask() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.requested++
	return r.requested
}

// asked is the number of the last request made so far; a publication that
// reads the node's state after this call covers it.
func (r *republishTracker) asked() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.requested
}

// done records that every request up to n is published.
func (r *republishTracker) done(n uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if n <= r.covered {
		return
	}
	r.covered = n
	if r.changed != nil {
		close(r.changed)
		r.changed = nil
	}
}

// wait returns once request n is published, or with ctx's error.
func (r *republishTracker) wait(ctx context.Context, n uint64) error {
	for {
		r.mu.Lock()
		if r.covered >= n {
			r.mu.Unlock()
			return nil
		}
		if r.changed == nil {
			r.changed = make(chan struct{})
		}
		ch := r.changed
		r.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("wait for republish %d: %w", n, ctx.Err())
		}
	}
}
