package checkpoint

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestLockFollowsItsContext: a second Lock, from this process or another
// (flock locks belong to open files), waits for the first until its context
// ends, and then fails with ErrLockTimeout; once the first is released it
// takes the lock, even with a context already done.
func TestLockFollowsItsContext(t *testing.T) {
	s, err := NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	unlock, err := s.Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := s.Lock(ctx); !errors.Is(err, ErrLockTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Lock while held = %v, want ErrLockTimeout and the deadline", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("Lock while held returned after %v, deadline 100ms", took)
	}
	unlock()
	done, cancelDone := context.WithCancel(context.Background())
	cancelDone()
	again, err := s.Lock(done)
	if err != nil {
		t.Fatalf("Lock once free, with a context already done: %v", err)
	}
	again()
}
