package partition

import (
	"fmt"
	"testing"
)

// TestPrepareNumbersSetsAlike: eight counter sets of the same devices, each
// device's Consumes a map of ten counters (whose order Go leaves to chance),
// number their counters alike, so Rollout's groups see the sets as equal:
// the same place on each set in the same state is one group, played once.
func TestPrepareNumbersSetsAlike(t *testing.T) {
	var devices []Choice
	left := map[string]map[string]int64{}
	for s := range 8 {
		set := fmt.Sprintf("gpu-%d", s)
		left[set] = map[string]int64{}
		for d := range 3 {
			consumes := map[string]int64{}
			for c := range 10 {
				consumes[fmt.Sprintf("counter-%d", c)] = int64(d + 1)
				left[set][fmt.Sprintf("counter-%d", c)] = 10
			}
			devices = append(devices, Choice{CounterSet: set, Class: fmt.Sprintf("class-%d", d), Consumes: consumes})
		}
	}
	l := Prepare(devices).Left(left)
	shapes := make([]string, 8)
	member := l.p.members()
	want := l.group(0, member, shapes)
	for s := 1; s < 8; s++ {
		if got := l.group(3*s, member, shapes); got != want {
			t.Fatalf("set %d's first device is in group %q, set 0's in %q", s, got, want)
		}
	}
}
