package partition_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/pkg/inventory"
	"github.com/tessera-gpu/tessera/pkg/partition"
)

// h200 builds an H200 as NVML reports it (NVIDIA's published geometry).
func h200(index int) inventory.GPU {
	pl := func(step, size, n int) []inventory.Placement {
		var out []inventory.Placement
		for i := range n {
			out = append(out, inventory.Placement{Start: i * step, Size: size})
		}
		return out
	}
	return inventory.GPU{
		Index: index, Minor: index, UUID: fmt.Sprintf("GPU-%d", index), ProductName: "NVIDIA H200", MemoryBytes: 141 << 30,
		MIG: inventory.MIG{Capable: true, ToggleWithoutReset: true, Profiles: []inventory.MIGProfile{
			{ID: 0, Name: "1g.18gb", SliceCount: 1, InstanceCount: 7, Decoders: 1, Placements: pl(1, 1, 7)},
			{ID: 1, Name: "2g.35gb", SliceCount: 2, InstanceCount: 3, Decoders: 1, Placements: pl(2, 2, 3)},
			{ID: 2, Name: "3g.71gb", SliceCount: 3, InstanceCount: 2, Decoders: 2, Placements: pl(4, 4, 2)},
			{ID: 3, Name: "4g.71gb", SliceCount: 4, InstanceCount: 1, Decoders: 2, Placements: pl(4, 4, 1)},
			{ID: 4, Name: "7g.141gb", SliceCount: 7, InstanceCount: 1, Decoders: 7, JPEGEngines: 7, OFAEngines: 1, Placements: pl(8, 8, 1)},
			{ID: 7, Name: "1g.18gb+me", SliceCount: 1, InstanceCount: 1, Decoders: 1, JPEGEngines: 1, OFAEngines: 1, Placements: pl(1, 1, 7)},
			{ID: 9, Name: "1g.35gb", SliceCount: 1, InstanceCount: 4, Decoders: 1, Placements: pl(2, 2, 4)},
		}},
	}
}

func names(g partition.GPU, kind partition.Kind) []string {
	var out []string
	for _, d := range g.Devices {
		if d.Kind == kind {
			out = append(out, d.Name)
		}
	}
	return out
}

func TestBuildH200(t *testing.T) {
	g := partition.Build(h200(3), partition.Options{})
	if g.CounterSet != "gpu-3" {
		t.Errorf("counter set = %q", g.CounterSet)
	}
	wantCounters := map[string]int64{"ofa-engines": 1}
	for i := range 8 {
		wantCounters[fmt.Sprintf("memory-slice-%d", i)] = 1
	}
	if diff := cmp.Diff(wantCounters, g.Counters); diff != "" {
		t.Errorf("counters (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"gpu-3"}, names(g, partition.KindGPU)); diff != "" {
		t.Error(diff)
	}
	if diff := cmp.Diff([]string{"gpu-3-shared"}, names(g, partition.KindShared)); diff != "" {
		t.Error(diff)
	}
	mig := names(g, partition.KindMIG)
	if len(mig) != 25 {
		t.Errorf("%d MIG devices, want 25: %v", len(mig), mig)
	}
	for _, n := range mig {
		if strings.ContainsAny(n, ".+") || len(n) > 63 {
			t.Errorf("device name %q is not a DNS label", n)
		}
	}
	for _, d := range g.Devices {
		switch d.Kind {
		case partition.KindGPU, partition.KindShared:
			if diff := cmp.Diff(wantCounters, d.Consumes); diff != "" {
				t.Errorf("%s must consume every counter (-want +got):\n%s", d.Name, diff)
			}
		case partition.KindMIG:
			if got := d.Name; got != gpuapi.MIGDeviceName(3, d.Profile.Name, d.Placement.Start) {
				t.Errorf("name %q does not match profile %s at %d", got, d.Profile.Name, d.Placement.Start)
			}
			slices := 0
			for c := range d.Consumes {
				if strings.HasPrefix(c, "memory-slice-") {
					slices++
				}
			}
			if slices != d.Placement.Size {
				t.Errorf("%s consumes %d memory slices, placement has %d", d.Name, slices, d.Placement.Size)
			}
			if wantOFA := int64(d.Profile.OFAEngines); d.Consumes["ofa-engines"] != wantOFA {
				t.Errorf("%s consumes %d ofa-engines, want %d", d.Name, d.Consumes["ofa-engines"], wantOFA)
			}
		}
	}
}

func TestMIGName(t *testing.T) {
	tests := map[string]struct {
		profile string
		start   int
		want    string
	}{
		"plain":    {"1g.18gb", 3, "gpu-0-mig-1g18gb-3"},
		"media":    {"1g.18gb+me", 0, "gpu-0-mig-1g18gb-me-0"},
		"full GPU": {"7g.141gb", 0, "gpu-0-mig-7g141gb-0"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := gpuapi.MIGDeviceName(0, tc.profile, tc.start); got != tc.want {
				t.Errorf("MIGName = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestWhatIsOffered(t *testing.T) {
	noToggle := h200(0)
	noToggle.MIG.ToggleWithoutReset = false
	enabledNoToggle := noToggle
	enabledNoToggle.MIG.Enabled = true
	notCapable := h200(0)
	notCapable.MIG = inventory.MIG{}
	tests := map[string]struct {
		gpu                inventory.GPU
		opts               partition.Options
		wantMIG, wantShare int
		wantWhole          int
	}{
		"MIG off, toggles":         {gpu: h200(0), wantMIG: 25, wantShare: 1, wantWhole: 1},
		"MIG off, needs reset":     {gpu: noToggle, wantMIG: 0, wantShare: 1, wantWhole: 1},
		"MIG on, needs reset":      {gpu: enabledNoToggle, wantMIG: 25, wantShare: 0, wantWhole: 0},
		"not MIG capable":          {gpu: notCapable, wantMIG: 0, wantShare: 1, wantWhole: 1},
		"admin turned MIG off":     {gpu: h200(0), opts: partition.Options{DisableMIG: true}, wantShare: 1, wantWhole: 1},
		"admin turned sharing off": {gpu: h200(0), opts: partition.Options{DisableSharing: true}, wantMIG: 25, wantWhole: 1},
		"admin turned both off":    {gpu: h200(0), opts: partition.Options{DisableMIG: true, DisableSharing: true}, wantWhole: 1},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			g := partition.Build(tc.gpu, tc.opts)
			if got := len(names(g, partition.KindMIG)); got != tc.wantMIG {
				t.Errorf("%d MIG devices, want %d", got, tc.wantMIG)
			}
			if got := len(names(g, partition.KindShared)); got != tc.wantShare {
				t.Errorf("%d shared devices, want %d", got, tc.wantShare)
			}
			if got := len(names(g, partition.KindGPU)); got != tc.wantWhole {
				t.Errorf("%d whole-GPU devices, want %d", got, tc.wantWhole)
			}
			if tc.wantMIG == 0 {
				if _, ok := g.Counters["ofa-engines"]; ok {
					t.Errorf("engine counter published without MIG devices")
				}
			}
		})
	}
}

// TestPackingOrder pins the documented policy: small partitions fill the
// memory slices that the fewest larger placements need.
func TestPackingOrder(t *testing.T) {
	g := partition.Build(h200(0), partition.Options{})
	byProfile := map[string][]int{}
	for _, d := range g.Devices {
		if d.Kind == partition.KindMIG {
			byProfile[d.Profile.Name] = append(byProfile[d.Profile.Name], d.Placement.Start)
		}
	}
	want := map[string][]int{
		"1g.18gb":    {6, 5, 4, 3, 2, 1, 0},
		"1g.18gb+me": {6, 5, 4, 3, 2, 1, 0},
		"1g.35gb":    {6, 4, 2, 0},
		"2g.35gb":    {4, 2, 0},
		"3g.71gb":    {4, 0},
		"4g.71gb":    {0},
		"7g.141gb":   {0},
	}
	if diff := cmp.Diff(want, byProfile); diff != "" {
		t.Errorf("placement order (-want +got):\n%s", diff)
	}
}

func TestInstanceLimitBecomesCounterWhenItBinds(t *testing.T) {
	gpu := h200(0)
	// Take the engines away: only the instance limit of the +me profile
	// now stops two of them from being created.
	for i := range gpu.MIG.Profiles {
		gpu.MIG.Profiles[i].OFAEngines, gpu.MIG.Profiles[i].JPEGEngines = 0, 0
	}
	g := partition.Build(gpu, partition.Options{})
	if got := g.Counters["instances-1g18gb-me"]; got != 1 {
		t.Errorf("instances-1g18gb-me = %d, want 1; counters %v", got, g.Counters)
	}
	for name := range g.Counters {
		if strings.HasPrefix(name, "instances-") && name != "instances-1g18gb-me" {
			t.Errorf("counter %s can never bind but is published", name)
		}
	}
}

func TestBuildIsDeterministic(t *testing.T) {
	a := partition.Build(h200(0), partition.Options{})
	for range 20 {
		if diff := cmp.Diff(a, partition.Build(h200(0), partition.Options{})); diff != "" {
			t.Fatalf("Build differs between calls:\n%s", diff)
		}
	}
}

// TestDevicesAreNamedByMinorNumber: a GPU's devices and counter set carry
// its minor number, which stays with the physical GPU when the NVML index
// shifts (another GPU failed to probe after a reboot).
func TestDevicesAreNamedByMinorNumber(t *testing.T) {
	gpu := h200(1)
	gpu.Minor = 2
	out := partition.Build(gpu, partition.Options{})
	if out.CounterSet != "gpu-2" {
		t.Errorf("counter set %s, want gpu-2", out.CounterSet)
	}
	for _, d := range out.Devices {
		if !strings.HasPrefix(d.Name, "gpu-2") {
			t.Errorf("device %s of the GPU with minor 2 (index 1)", d.Name)
		}
	}
}
