package prepare

import (
	"context"
	"fmt"
	"sort"
	"sync"
)

// keyedMutex serialises work per key (claim UID) and forgets keys nobody
// holds, so that it does not grow with every claim ever seen.
type keyedMutex struct {
	mu    sync.Mutex
	locks map[string]*keyedEntry
}

// keyedEntry is one key's lock: a token in held while someone holds it (a
// channel, so that a wait can end with its context).
type keyedEntry struct {
	held  chan struct{}
	users int
}

// lock locks key, waiting until ctx ends, and returns the unlock function.
func (k *keyedMutex) lock(ctx context.Context, key string) (func(), error) {
	k.mu.Lock()
	if k.locks == nil {
		k.locks = map[string]*keyedEntry{}
	}
	e, ok := k.locks[key]
	if !ok {
		e = &keyedEntry{held: make(chan struct{}, 1)}
		k.locks[key] = e
	}
	e.users++
	k.mu.Unlock()
	release := func() {
		k.mu.Lock()
		e.users--
		if e.users == 0 {
			delete(k.locks, key)
		}
		k.mu.Unlock()
	}
	// A free lock is taken even with ctx done (an unprepare whose request
	// was cancelled still tears down): select would pick at random.
	select {
	case e.held <- struct{}{}:
	default:
		select {
		case e.held <- struct{}{}:
		case <-ctx.Done():
			release()
			return nil, fmt.Errorf("claim %s: an earlier operation on it is still running: %w", key, context.Cause(ctx))
		}
	}
	return func() {
		<-e.held
		release()
	}, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
