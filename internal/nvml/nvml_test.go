package nvml_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	gonvml "github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
	"github.com/google/go-cmp/cmp"

	tnvml "github.com/tessera-gpu/tessera/internal/nvml"
	"github.com/tessera-gpu/tessera/internal/nvml/nvmlmock"
	"github.com/tessera-gpu/tessera/pkg/inventory"
)

// publishedPlacements is NVIDIA's MIG user guide, written out independently of
// the mock's tables: for each profile, its placements as start:size in memory
// slices. The same table holds for A100-40GB, H100-80GB, H200 and B200, with
// each GPU's own profile names.
var publishedPlacements = map[string]map[string]string{
	"dgxa100": table("1g.5gb", "1g.5gb+me", "1g.10gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb"),
	"dgxh100": table("1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"),
	"dgxh200": table("1g.18gb", "1g.18gb+me", "1g.35gb", "2g.35gb", "3g.71gb", "4g.71gb", "7g.141gb"),
	"dgxb200": table("1g.23gb", "1g.23gb+me", "1g.45gb", "2g.45gb", "3g.90gb", "4g.90gb", "7g.180gb"),
}

func table(n1, n1me, n1x2, n2, n3, n4, n7 string) map[string]string {
	return map[string]string{
		n1:   "0:1 1:1 2:1 3:1 4:1 5:1 6:1",
		n1me: "0:1 1:1 2:1 3:1 4:1 5:1 6:1",
		n1x2: "0:2 2:2 4:2 6:2",
		n2:   "0:2 2:2 4:2",
		n3:   "0:4 4:4",
		n4:   "0:4",
		n7:   "0:8",
	}
}

func discover(t *testing.T, spec string) inventory.Node {
	t.Helper()
	b, err := tnvml.ParseBackend(spec)
	if err != nil {
		t.Fatal(err)
	}
	lib, err := tnvml.Open(b)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = lib.Shutdown() })
	node, err := lib.Discover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return node
}

func TestMockPlacementsMatchNVIDIA(t *testing.T) {
	for model, want := range publishedPlacements {
		t.Run(model, func(t *testing.T) {
			node := discover(t, "mock:"+model)
			if len(node.GPUs) != 8 {
				t.Fatalf("got %d GPUs, want 8", len(node.GPUs))
			}
			for _, gpu := range node.GPUs {
				got := map[string]string{}
				total := 0
				for _, p := range gpu.MIG.Profiles {
					s := ""
					for i, pl := range p.Placements {
						if i > 0 {
							s += " "
						}
						s += fmt.Sprintf("%d:%d", pl.Start, pl.Size)
					}
					got[p.Name] = s
					total += len(p.Placements)
				}
				if diff := cmp.Diff(want, got); diff != "" {
					t.Errorf("GPU %d placements (-NVIDIA +mock):\n%s", gpu.Index, diff)
				}
				if total != 25 {
					t.Errorf("GPU %d: %d placements, want 25", gpu.Index, total)
				}
			}
		})
	}
}

func TestDiscoverIsDeterministicPerSeed(t *testing.T) {
	a := discover(t, "mock:dgxh200:2")
	b := discover(t, "mock:dgxh200:2")
	if diff := cmp.Diff(a, b); diff != "" {
		t.Errorf("two discoveries differ (-first +second):\n%s", diff)
	}
	gpu := a.GPUs[1]
	want := inventory.GPU{
		Index: 1, Minor: 1, ProductName: "NVIDIA H200", Brand: "nvidia", Architecture: "hopper",
		CUDAComputeCapability: "9.0", MemoryBytes: 144384 << 20, Multiprocessors: 112, PCIBusID: "0000:20:00.0",
	}
	got := gpu
	got.UUID, got.MIG = "", inventory.MIG{}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("GPU 1 (-want +got):\n%s", diff)
	}
	if a.DriverVersion != "550.54.15" || a.CUDADriverVersion != "12.4" {
		t.Errorf("versions = %q, %q", a.DriverVersion, a.CUDADriverVersion)
	}
	if !gpu.MIG.Capable || gpu.MIG.Enabled || !gpu.MIG.ToggleWithoutReset {
		t.Errorf("H200 MIG = %+v, want capable, off, toggles without reset", gpu.MIG)
	}
	other, err := tnvml.Open(tnvml.Backend{Mock: "dgxh200", Count: 2, Seed: "node-b"})
	if err != nil {
		t.Fatal(err)
	}
	c, err := other.Discover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if c.GPUs[0].UUID == a.GPUs[0].UUID {
		t.Errorf("nodes with different seeds share GPU UUID %s", c.GPUs[0].UUID)
	}
}

func TestA100NeedsResetToToggleMIG(t *testing.T) {
	node := discover(t, "mock:dgxa100:1")
	if m := node.GPUs[0].MIG; !m.Enabled || m.ToggleWithoutReset {
		t.Fatalf("A100 MIG = %+v, want on and not toggleable without reset", m)
	}
	lib, _ := tnvml.Open(tnvml.Backend{Mock: "dgxa100", Count: 1})
	err := lib.SetMIGMode(context.Background(), 0, false)
	if err == nil || !errors.Is(err, tnvml.ErrResetRequired) {
		t.Fatalf("SetMIGMode(off) on A100 = %v, want ErrResetRequired", err)
	}
}

func TestParseBackend(t *testing.T) {
	tests := map[string]struct {
		spec    string
		want    tnvml.Backend
		wantErr bool
	}{
		"default":       {spec: "", want: tnvml.Backend{}},
		"real":          {spec: "real", want: tnvml.Backend{}},
		"mock":          {spec: "mock:dgxh100", want: tnvml.Backend{Mock: "dgxh100", Count: 8}},
		"mock count":    {spec: "mock:dgxb200:3", want: tnvml.Backend{Mock: "dgxb200", Count: 3}},
		"unknown model": {spec: "mock:dgx1", wantErr: true},
		"bad count":     {spec: "mock:dgxh200:x", wantErr: true},
		"zero count":    {spec: "mock:dgxh200:0", wantErr: true},
		"bad scheme":    {spec: "fake", wantErr: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := tnvml.ParseBackend(tc.spec)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if diff := cmp.Diff(tc.want, got); !tc.wantErr && diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func openMock(t *testing.T, model string, count int) (*nvmlmock.Server, tnvml.Library) {
	t.Helper()
	s, err := nvmlmock.New(model, count, t.Name())
	if err != nil {
		t.Fatal(err)
	}
	lib, err := tnvml.OpenMock(s)
	if err != nil {
		t.Fatal(err)
	}
	return s, lib
}

func TestMIGLifecycle(t *testing.T) {
	ctx := context.Background()
	s, lib := openMock(t, "dgxh200", 1)
	p3g := placement(0, 4)
	if _, err := lib.CreateMIGDevice(ctx, 0, gonvml.GPU_INSTANCE_PROFILE_3_SLICE, p3g); !tnvml.IsReturn(err, gonvml.ERROR_NOT_SUPPORTED) {
		t.Fatalf("create with MIG off = %v, want NOT_SUPPORTED", err)
	}
	if err := lib.SetMIGMode(ctx, 0, true); err != nil {
		t.Fatal(err)
	}
	a, err := lib.CreateMIGDevice(ctx, 0, gonvml.GPU_INSTANCE_PROFILE_3_SLICE, p3g)
	if err != nil {
		t.Fatal(err)
	}
	if a.UUID == "" || a.Placement != p3g {
		t.Errorf("created %+v, want a UUID and placement %v", a, p3g)
	}
	refusals := map[string]struct {
		profile   int
		placement inventory.Placement
		want      gonvml.Return
	}{
		"overlap":           {gonvml.GPU_INSTANCE_PROFILE_1_SLICE, placement(3, 1), gonvml.ERROR_INSUFFICIENT_RESOURCES},
		"full GPU":          {gonvml.GPU_INSTANCE_PROFILE_7_SLICE, placement(0, 8), gonvml.ERROR_INSUFFICIENT_RESOURCES},
		"invalid placement": {gonvml.GPU_INSTANCE_PROFILE_3_SLICE, placement(2, 4), gonvml.ERROR_INVALID_ARGUMENT},
	}
	for name, r := range refusals {
		if _, err := lib.CreateMIGDevice(ctx, 0, r.profile, r.placement); !tnvml.IsReturn(err, r.want) {
			t.Errorf("%s: err = %v, want %s", name, err, gonvml.ErrorString(r.want))
		}
	}
	// One optical-flow engine: a second +me partition is refused even
	// where memory slices are free.
	if _, err := lib.CreateMIGDevice(ctx, 0, gonvml.GPU_INSTANCE_PROFILE_1_SLICE_REV1, placement(4, 1)); err != nil {
		t.Fatal(err)
	}
	if _, err := lib.CreateMIGDevice(ctx, 0, gonvml.GPU_INSTANCE_PROFILE_1_SLICE_REV1, placement(5, 1)); !tnvml.IsReturn(err, gonvml.ERROR_INSUFFICIENT_RESOURCES) {
		t.Errorf("second +me partition: err = %v, want INSUFFICIENT_RESOURCES", err)
	}
	if err := lib.SetMIGMode(ctx, 0, false); !tnvml.IsReturn(err, gonvml.ERROR_IN_USE) {
		t.Errorf("MIG off with partitions: err = %v, want IN_USE", err)
	}

	list, err := lib.MIGDevices(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].GPUInstanceID != a.GPUInstanceID || list[0].UUID != a.UUID {
		t.Errorf("MIGDevices = %+v", list)
	}
	for _, m := range list {
		if err := lib.DestroyMIGDevice(ctx, 0, m.GPUInstanceID); err != nil {
			t.Fatal(err)
		}
	}
	if err := lib.DestroyMIGDevice(ctx, 0, a.GPUInstanceID); err != nil {
		t.Errorf("destroying twice: %v", err)
	}
	dev := s.Devices[0].(*server.Device)
	if n := len(dev.GpuInstances); n != 0 {
		t.Errorf("%d GPU instances left on the mock", n)
	}
	if err := lib.SetMIGMode(ctx, 0, false); err != nil {
		t.Errorf("MIG off when empty: %v", err)
	}
}

func placement(start, size int) inventory.Placement {
	return inventory.Placement{Start: start, Size: size}
}
