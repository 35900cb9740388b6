package resourceslice_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/tessera-gpu/tessera/pkg/resourceslice"
)

func published(opts resourceslice.Options) []string {
	var out []string
	for _, s := range resourceslice.Build("n1", node(2), opts).Pools["n1"].Slices {
		for _, d := range s.Devices {
			if strings.HasPrefix(d.Name, "gpu-0") {
				out = append(out, d.Name)
			}
		}
	}
	slices.Sort(out)
	return out
}

func TestWithdrawBlocked(t *testing.T) {
	all := published(resourceslice.Options{})
	tests := map[string]struct {
		prepared  []string
		withdraw  bool
		want      []string
		allocated []string
	}{
		"nothing prepared":   {nil, true, all, nil},
		"withdrawal off":     {[]string{"gpu-0"}, false, all, nil},
		"whole GPU prepared": {[]string{"gpu-0"}, true, []string{"gpu-0"}, nil},
		"shares prepared":    {[]string{"gpu-0-shared"}, true, []string{"gpu-0-shared"}, nil},
		"other GPU prepared": {[]string{"gpu-1"}, true, all, nil},
		"3g at 4 prepared": {[]string{"gpu-0-mig-3g71gb-4"}, true, []string{
			"gpu-0-mig-1g18gb-0", "gpu-0-mig-1g18gb-1", "gpu-0-mig-1g18gb-2", "gpu-0-mig-1g18gb-3",
			"gpu-0-mig-1g18gb-me-0", "gpu-0-mig-1g18gb-me-1", "gpu-0-mig-1g18gb-me-2", "gpu-0-mig-1g18gb-me-3",
			"gpu-0-mig-3g71gb-0", "gpu-0-mig-3g71gb-4",
		}, nil},
		// The +me partition takes the GPU's only optical-flow engine, so
		// no other +me partition fits, wherever it is placed.
		"1g+me at 6 prepared": {[]string{"gpu-0-mig-1g18gb-me-6"}, true, []string{
			"gpu-0-mig-1g18gb-0", "gpu-0-mig-1g18gb-1", "gpu-0-mig-1g18gb-2", "gpu-0-mig-1g18gb-3",
			"gpu-0-mig-1g18gb-4", "gpu-0-mig-1g18gb-5", "gpu-0-mig-1g18gb-me-6", "gpu-0-mig-3g71gb-0",
		}, nil},
		// A stale prepared entry (its claim deallocated, the whole GPU
		// allocated since) never hides an allocated device; the allocated
		// device does not withdraw anything itself.
		"share entry stale, whole GPU allocated": {
			prepared: []string{"gpu-0-shared"}, withdraw: true, allocated: []string{"gpu-0"},
			want: []string{"gpu-0", "gpu-0-shared"},
		},
		"allocated, nothing prepared": {withdraw: true, allocated: []string{"gpu-0-mig-7g141gb-0"}, want: all},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			prepared := map[string]bool{}
			for _, d := range tc.prepared {
				prepared[d] = true
			}
			allocated := map[string]bool{}
			for _, d := range tc.allocated {
				allocated[d] = true
			}
			got := published(resourceslice.Options{Prepared: prepared, Allocated: allocated, WithdrawBlocked: tc.withdraw})
			want := slices.Clone(tc.want)
			slices.Sort(want)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("GPU 0's published devices (-want +got):\n%s", diff)
			}
		})
	}
}

// TestWithdrawalChangesOneSlice: with withdrawal on, each device slice holds
// one GPU's devices, so a prepare (or the unprepare that undoes it) changes
// exactly one slice and never the number of slices; the publication
// controller then updates that slice without a new pool generation.
func TestWithdrawalChangesOneSlice(t *testing.T) {
	inv := node(4)
	base := resourceslice.Build("n1", inv, resourceslice.Options{WithdrawBlocked: true}).Pools["n1"].Slices
	for i, s := range base {
		gpus := map[string]bool{}
		for _, d := range s.Devices {
			gpus[strings.SplitN(d.Name, "-", 3)[1]] = true
		}
		if len(gpus) > 1 {
			t.Errorf("slice %d holds devices of GPUs %v, want one GPU's", i, gpus)
		}
	}
	for _, prepared := range []string{"gpu-2", "gpu-1-shared", "gpu-3-mig-3g71gb-4", "gpu-0-mig-1g18gb-me-6", "gpu-0-mig-7g141gb-0"} {
		t.Run(prepared, func(t *testing.T) {
			next := resourceslice.Build("n1", inv, resourceslice.Options{WithdrawBlocked: true, Prepared: map[string]bool{prepared: true}}).Pools["n1"].Slices
			if len(next) != len(base) {
				t.Fatalf("%d slices after the prepare, %d before", len(next), len(base))
			}
			changed := 0
			for i := range base {
				if !cmp.Equal(base[i], next[i]) {
					changed++
				}
			}
			if changed != 1 {
				t.Errorf("preparing %s changed %d slices, want 1", prepared, changed)
			}
		})
	}
}
