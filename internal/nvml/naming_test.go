package nvml

import (
	"testing"

	gonvml "github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
	"github.com/google/go-cmp/cmp"
	"k8s.io/klog/v2/ktesting"

	"github.com/tessera-gpu/tessera/internal/nvml/nvmlmock"
)

// TestProfileNamesCheckedAgainstNVML: with MIG on, NVML's own names are
// read. Where they differ from Tessera's table the table's name is kept (a
// device's name must not change with MIG mode); a product the table lacks
// is named by NVML with MIG on and offers no partitions with MIG off.
func TestProfileNamesCheckedAgainstNVML(t *testing.T) {
	tests := map[string]struct {
		product string
		migOn   bool
		want    map[int]string
	}{
		"known, NVML differs": {product: "NVIDIA H200", migOn: true, want: map[int]string{
			0: "1g.18gb", 1: "2g.35gb", 2: "3g.71gb", 3: "4g.71gb", 4: "7g.141gb", 7: "1g.18gb+me", 9: "1g.35gb",
		}},
		"unknown, MIG on": {product: "NVIDIA H200 NVL", migOn: true, want: map[int]string{
			0: "nvml-0", 1: "nvml-1", 2: "nvml-2", 3: "nvml-3", 4: "nvml-4", 7: "nvml-7", 9: "nvml-9",
		}},
		"unknown, MIG off": {product: "NVIDIA H200 NVL", want: map[int]string{}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, ctx := ktesting.NewTestContext(t)
			s, err := nvmlmock.New("dgxh200", 1, t.Name())
			if err != nil {
				t.Fatal(err)
			}
			s.Devices[0].(*server.Device).Config.Name = tc.product
			// NVML names every profile "nvml-<id>" where it answers.
			v3 := func(dev gonvml.Device, id int) (gonvml.GpuInstanceProfileInfo_v3, gonvml.Return) {
				info, ret := s.GpuInstanceProfileInfoV3(dev, id)
				if ret == gonvml.SUCCESS {
					info.Name = [96]int8{}
					for i, c := range []byte("MIG nvml-" + string(rune('0'+id))) {
						info.Name[i] = int8(c)
					}
				}
				return info, ret
			}
			l, err := newLibrary(s, v3, nil)
			if err != nil {
				t.Fatal(err)
			}
			if tc.migOn {
				if err := l.SetMIGMode(ctx, 0, true); err != nil {
					t.Fatal(err)
				}
			}
			node, err := l.Discover(ctx)
			if err != nil {
				t.Fatal(err)
			}
			got := map[int]string{}
			for _, p := range node.GPUs[0].MIG.Profiles {
				got[p.ID] = p.Name
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("profile names (-want +got):\n%s", diff)
			}
		})
	}
}

// TestPendingMIGModeIsLeftAlone: a GPU found with a MIG mode pending until
// its next reset (set by an admin, or before a restart) is discovered as
// not switching, and Tessera neither changes nor undoes its mode.
func TestPendingMIGModeIsLeftAlone(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	s, err := nvmlmock.New("dgxh200", 1, t.Name())
	if err != nil {
		t.Fatal(err)
	}
	s.SetResetRequired(0, true)
	_, _ = s.Devices[0].SetMigMode(gonvml.DEVICE_MIG_ENABLE) // the admin's, left pending: its activation status is not this test's
	s.SetResetRequired(0, false)
	l, err := newLibrary(s, s.GpuInstanceProfileInfoV3, nil)
	if err != nil {
		t.Fatal(err)
	}
	node, err := l.Discover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if m := node.GPUs[0].MIG; m.Enabled || m.ToggleWithoutReset {
		t.Errorf("GPU with MIG on pending = %+v, want off and not switching", m)
	}
	sets := s.MIGModeSets(0)
	for _, on := range []bool{true, false} {
		if err := l.SetMIGMode(ctx, 0, on); err == nil {
			t.Errorf("SetMIGMode(%v) on a GPU with a pending mode succeeded", on)
		}
	}
	if n := s.MIGModeSets(0); n != sets {
		t.Errorf("%d mode changes on a GPU with a pending mode, want none", n-sets)
	}
	if got := s.PendingMIGMode(0); got != gonvml.DEVICE_MIG_ENABLE {
		t.Errorf("pending mode = %d, want the admin's (on)", got)
	}
}
