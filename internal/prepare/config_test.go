package prepare

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	resourceapi "k8s.io/api/resource/v1"

	"github.com/tessera-gpu/tessera/pkg/partition"
)

func TestResolveConfig(t *testing.T) {
	ts := func(interval string) string {
		return `{"apiVersion":"config.gpu.tessera.dev/v1alpha1","kind":"GPUConfig","sharing":{"strategy":"TimeSlicing","timeSlicing":{"interval":"` + interval + `"}}}`
	}
	const mig = `{"apiVersion":"config.gpu.tessera.dev/v1alpha1","kind":"MIGConfig"}`
	class, claim := resourceapi.AllocationConfigSourceClass, resourceapi.AllocationConfigSourceClaim
	for name, tc := range map[string]struct {
		claim *resourceapi.ResourceClaim
		kinds []partition.Kind
		// want is the interval each result ends up with ("" for no
		// GPUConfig).
		want []string
	}{
		"later claim entry wins": {
			claim: makeClaim("u").Device("a", "gpu-0").
				Config(claim, ts("Short")).Config(claim, ts("Long")).Obj(),
			kinds: []partition.Kind{partition.KindGPU},
			want:  []string{"Long"},
		},
		"claim wins over class whatever the order": {
			claim: makeClaim("u").Device("a", "gpu-0").
				Config(claim, ts("Short")).Config(class, ts("Long")).Obj(),
			kinds: []partition.Kind{partition.KindGPU},
			want:  []string{"Short"},
		},
		"request-scoped entry applies to its request only": {
			claim: makeClaim("u").Device("a", "gpu-0").Device("b", "gpu-1").
				Config(class, ts("Medium")).Config(claim, ts("Long"), "b").Obj(),
			kinds: []partition.Kind{partition.KindGPU, partition.KindGPU},
			want:  []string{"Medium", "Long"},
		},
		"subrequest matches its main request": {
			claim: makeClaim("u").Device("a/whole", "gpu-0").Config(claim, ts("Short"), "a").Obj(),
			kinds: []partition.Kind{partition.KindGPU},
			want:  []string{"Short"},
		},
		"unscoped entries apply only where their kind fits": {
			claim: makeClaim("u").Device("a", "gpu-0").Device("b", "gpu-1-mig-1g18gb-0").
				Config(class, ts("Long")).Config(class, mig).Obj(),
			kinds: []partition.Kind{partition.KindGPU, partition.KindMIG},
			want:  []string{"Long", ""},
		},
	} {
		t.Run(name, func(t *testing.T) {
			alloc := tc.claim.Status.Allocation
			got, err := resolveConfig(alloc, alloc.Devices.Results, tc.kinds)
			if err != nil {
				t.Fatal(err)
			}
			var intervals []string
			for _, c := range got {
				if c == nil {
					intervals = append(intervals, "")
					continue
				}
				intervals = append(intervals, string(c.Sharing.TimeSlicing.Interval))
			}
			if diff := cmp.Diff(tc.want, intervals); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}
