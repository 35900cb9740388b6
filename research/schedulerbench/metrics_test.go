package schedulerbench

import (
	"math"
	"testing"
	"time"
)

func TestHistogramQuantile(t *testing.T) {
	// 10 attempts up to 10 ms, 80 between 10 and 20 ms, 10 between 20 and 40 ms.
	h := histogram{0.01: 10, 0.02: 90, 0.04: 100, math.Inf(1): 100}
	before := histogram{0.01: 0, 0.02: 0, 0.04: 0, math.Inf(1): 0}
	tests := map[string]struct {
		q    float64
		want time.Duration
	}{
		"p10": {0.1, 10 * time.Millisecond},
		"p50": {0.5, 15 * time.Millisecond},
		"p99": {0.99, 38 * time.Millisecond},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got := h.minus(before).quantile(tc.q)
			if d := got - tc.want; d < -time.Microsecond || d > time.Microsecond {
				t.Errorf("quantile(%v) = %s, want %s", tc.q, got, tc.want)
			}
		})
	}
	if got := (histogram{}).quantile(0.5); got != 0 {
		t.Errorf("empty histogram: %s, want 0", got)
	}
}
