package cdi

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"tags.cncf.io/container-device-interface/pkg/cdi"
)

func TestWriteRemove(t *testing.T) {
	root := t.TempDir()
	w, err := New(WithRoot(root), WithDriverRoot("/run/nvidia/driver"))
	if err != nil {
		t.Fatal(err)
	}
	claim := Claim{
		UID: "3f1c-uid",
		Env: []string{"NVIDIA_VISIBLE_DEVICES=GPU-a"},
		Devices: []Device{{
			Name:        "gpu-0",
			DeviceNodes: []string{"/dev/nvidia0", "/dev/nvidiactl"},
			Env:         []string{"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=20"},
			Mounts:      []Mount{{HostPath: "/var/lib/tessera/mps/GPU-a", ContainerPath: "/tmp/nvidia-mps"}},
		}},
	}
	ids, err := w.Write(claim)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"gpu.tessera.dev/claim=3f1c-uid-gpu-0"}, ids); diff != "" {
		t.Errorf("device IDs (-want +got):\n%s", diff)
	}

	// The library itself must accept what was written.
	cache, err := cdi.NewCache(cdi.WithSpecDirs(root), cdi.WithAutoRefresh(false))
	if err != nil {
		t.Fatal(err)
	}
	if errs := cache.GetErrors(); len(errs) > 0 {
		t.Fatalf("CDI cache errors: %v", errs)
	}
	dev := cache.GetDevice(ids[0])
	if dev == nil {
		t.Fatalf("CDI cache has no device %s; devices: %v", ids[0], cache.ListDevices())
	}
	var hostPaths []string
	for _, n := range dev.ContainerEdits.DeviceNodes {
		hostPaths = append(hostPaths, n.HostPath)
	}
	if diff := cmp.Diff([]string{"/run/nvidia/driver/dev/nvidia0", "/run/nvidia/driver/dev/nvidiactl"}, hostPaths); diff != "" {
		t.Errorf("host paths under the driver root (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"NVIDIA_VISIBLE_DEVICES=GPU-a"}, dev.GetSpec().ContainerEdits.Env); diff != "" {
		t.Errorf("claim env (-want +got):\n%s", diff)
	}

	uids, err := w.Claims()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"3f1c-uid"}, uids); diff != "" {
		t.Errorf("Claims() (-want +got):\n%s", diff)
	}
	if err := w.Remove("3f1c-uid"); err != nil {
		t.Fatal(err)
	}
	if err := w.Remove("3f1c-uid"); err != nil {
		t.Errorf("second Remove: %v, want nil", err)
	}
	entries, _ := os.ReadDir(root)
	if len(entries) != 0 {
		t.Errorf("CDI root not empty after Remove: %v", entries)
	}
}

func TestMIGCapabilityDeviceNodes(t *testing.T) {
	for name, tc := range map[string]struct {
		files   map[string]string
		want    []string
		wantErr bool
	}{
		"found": {
			files: map[string]string{
				"gpu1/mig/gi3/access":     "DeviceFileMinor: 30\nDeviceFileMode: 292\n",
				"gpu1/mig/gi3/ci0/access": "DeviceFileMinor: 31\nDeviceFileMode: 292\n",
			},
			want: []string{"/dev/nvidia-caps/nvidia-cap30", "/dev/nvidia-caps/nvidia-cap31"},
		},
		"missing ci": {
			files:   map[string]string{"gpu1/mig/gi3/access": "DeviceFileMinor: 30\n"},
			wantErr: true,
		},
		"garbled": {
			files: map[string]string{
				"gpu1/mig/gi3/access":     "DeviceFileMinor: x\n",
				"gpu1/mig/gi3/ci0/access": "DeviceFileMinor: 31\n",
			},
			wantErr: true,
		},
	} {
		t.Run(name, func(t *testing.T) {
			proc := t.TempDir()
			for rel, content := range tc.files {
				path := filepath.Join(proc, "driver/nvidia/capabilities", rel)
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			got, err := MIGCapabilityDeviceNodes(proc, 1, 3, 0)
			if (err != nil) != tc.wantErr {
				t.Fatalf("MIGCapabilityDeviceNodes() error = %v, want error %v", err, tc.wantErr)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}
