package prepare

import (
	"time"

	"github.com/tessera-gpu/tessera/internal/checkpoint"
)

// restartBackoff spaces out the restarts of MPS daemons that fail to
// start: the delay before the next try doubles from base up to max, and a
// start that succeeds resets it. A nil *restartBackoff has every restart
// due.
type restartBackoff struct {
	base, max time.Duration
	delay     map[string]time.Duration
	next      map[string]time.Time
}

func newRestartBackoff(base, ceiling time.Duration) *restartBackoff {
	return &restartBackoff{base: base, max: ceiling, delay: map[string]time.Duration{}, next: map[string]time.Time{}}
}

// due reports whether the claim's daemon may be restarted at now.
func (b *restartBackoff) due(uid string, now time.Time) bool {
	if b == nil {
		return true
	}
	next, ok := b.next[uid]
	return !ok || !now.Before(next)
}

// failed records a failed restart at now.
func (b *restartBackoff) failed(uid string, now time.Time) {
	if b == nil {
		return
	}
	d := min(max(2*b.delay[uid], b.base), b.max)
	b.delay[uid], b.next[uid] = d, now.Add(d)
}

// succeeded forgets the claim's failures.
func (b *restartBackoff) succeeded(uid string) {
	if b == nil {
		return
	}
	delete(b.delay, uid)
	delete(b.next, uid)
}

// forgetAllBut forgets the claims that are no longer prepared.
func (b *restartBackoff) forgetAllBut(claims map[string]*checkpoint.Claim) {
	if b == nil {
		return
	}
	for uid := range b.next {
		if _, ok := claims[uid]; !ok {
			b.succeeded(uid)
		}
	}
}
