package nvmlreport

import (
	"context"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/tessera-gpu/tessera/internal/nvml/nvmlmock"
	"github.com/tessera-gpu/tessera/pkg/inventory"
	"github.com/tessera-gpu/tessera/pkg/partition"
)

func h200(t *testing.T) inventory.GPU {
	t.Helper()
	gpu, err := modelGPU(context.Background(), nvmlmock.Models["dgxh200"])
	if err != nil {
		t.Fatal(err)
	}
	return gpu
}

// TestCompare: what differs in MIG geometry, names or what is published
// matters; what varies between boards (memory, SMs) is only noted; the
// GPU's MIG mode and identity are state, not model.
func TestCompare(t *testing.T) {
	for name, tc := range map[string]struct {
		change func(*inventory.GPU)
		// want are the lines marked Differs or Note, of which the first
		// lines (default all) are compared.
		want  []Line
		lines int
	}{
		"the model itself": {change: func(*inventory.GPU) {}},
		"another index, minor, UUID and MIG mode": {change: func(g *inventory.GPU) {
			g.Index, g.Minor, g.UUID, g.MIG.Enabled = 3, 5, "GPU-other", true
		}},
		"more memory": {
			change: func(g *inventory.GPU) { g.MemoryBytes += 1 << 30 },
			want:   []Line{{Note, "memory: here 145408 MiB, model 144384 MiB"}},
		},
		"another architecture": {
			change: func(g *inventory.GPU) { g.Architecture = "blackwell" },
			want:   []Line{{Differs, "architecture: here blackwell, model hopper"}},
		},
		"a placement the model lacks": {
			change: func(g *inventory.GPU) {
				for i, p := range g.MIG.Profiles {
					if p.Name == "4g.71gb" { // at 0 only
						g.MIG.Profiles[i].Placements = append(p.Placements, inventory.Placement{Start: 4, Size: 4})
					}
				}
			},
			want: []Line{
				{Differs, "MIG profile 3: here 4g.71gb: 4 slices, 1 instances, 72704 MiB, 64 SMs, engines CE 4 DEC 2 ENC 0 JPEG 0 OFA 0, placements 0+4,4+4, model 4g.71gb: 4 slices, 1 instances, 72704 MiB, 64 SMs, engines CE 4 DEC 2 ENC 0 JPEG 0 OFA 0, placements 0+4"},
				{Differs, "devices published here, not by the model: gpu-0-mig-4g71gb-4"},
			},
		},
		"no MIG": {
			change: func(g *inventory.GPU) { g.MIG = inventory.MIG{} },
			lines:  2,
			want: []Line{
				{Differs, "MIG capable: here no, model yes"},
				{Differs, "MIG mode switches without a reset: here no, model yes"},
			},
		},
	} {
		t.Run(name, func(t *testing.T) {
			model := h200(t)
			seen := h200(t)
			tc.change(&seen)
			var got []Line
			for _, l := range Compare(seen, model, partition.Options{}) {
				// The full device list, noted where the lists differ, is
				// long; the lines of what differs follow it.
				if l.Mark != Same && !strings.HasPrefix(l.Text, "devices published here (") {
					got = append(got, l)
				}
			}
			if tc.lines > 0 && len(got) > tc.lines {
				// Every profile and partition missing, after the lines
				// that say why.
				got = got[:tc.lines]
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("lines that differ (-want +got):\n%s", diff)
			}
		})
	}
}
