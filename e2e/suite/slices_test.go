package suite

import (
	"fmt"
	"regexp"
	"testing"

	resourceapi "k8s.io/api/resource/v1"

	"github.com/tessera-gpu/tessera/e2e/demo"
)

// TestSlicesPublished checks that the API server accepted every ResourceSlice each
// plugin published: each node's pool is complete and holds, per GPU, the whole GPU,
// the time-shared GPU and all 25 MIG placements of an H200.
func TestSlicesPublished(t *testing.T) {
	needCluster(t)
	gpus := map[string]int{nodeA: 8, nodeB: 8, nodeSmall: 1}
	wholeName := regexp.MustCompile(`^gpu-(\d+)$`)
	for name, count := range gpus {
		t.Run(name, func(t *testing.T) {
			n := node(t, name)
			complete, err := n.PoolComplete(t.Context())
			if err != nil || !complete {
				t.Fatalf("pool of %s incomplete (err %v): some slices were not accepted", name, err)
			}
			slices, err := n.Slices(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			byType := map[string]int{}
			counterSets := map[string]bool{}
			for _, s := range slices {
				if s.Spec.Pool.Name != name {
					t.Errorf("slice %s is in pool %q, want the node's name", s.Name, s.Spec.Pool.Name)
				}
				for _, cs := range s.Spec.SharedCounters {
					counterSets[cs.Name] = true
				}
				for _, d := range s.Spec.Devices {
					typ, ok := demo.Attribute(d.Attributes, "type")
					if !ok || typ.StringValue == nil {
						t.Errorf("device %s has no type attribute", d.Name)
						continue
					}
					byType[*typ.StringValue]++
					if *typ.StringValue == "mig" {
						checkConsumes(t, d)
					}
					if m := wholeName.FindStringSubmatch(d.Name); m != nil && *typ.StringValue != "gpu" {
						t.Errorf("device %s has type %s, want gpu", d.Name, *typ.StringValue)
					}
				}
			}
			want := map[string]int{"gpu": count, "shared": count, "mig": 25 * count}
			for typ, n := range want {
				if byType[typ] != n {
					t.Errorf("%d devices of type %s published, want %d (all: %v)", byType[typ], typ, n, byType)
				}
			}
			for i := range count {
				if !counterSets[fmt.Sprintf("gpu-%d", i)] {
					t.Errorf("counter set gpu-%d not published (have %v)", i, counterSets)
				}
			}
		})
	}
}

// checkConsumes checks that a MIG device draws on its GPU's counter set, which is
// what keeps the scheduler from overlapping partitions.
func checkConsumes(t *testing.T, d resourceapi.Device) {
	t.Helper()
	if len(d.ConsumesCounters) == 0 {
		t.Errorf("MIG device %s consumes no counters", d.Name)
		return
	}
	re := regexp.MustCompile(`^gpu-\d+$`)
	for _, c := range d.ConsumesCounters {
		if !re.MatchString(c.CounterSet) {
			t.Errorf("MIG device %s consumes from counter set %q, want gpu-N", d.Name, c.CounterSet)
		}
	}
}
