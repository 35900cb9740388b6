package kubelet

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestResolveEdits(t *testing.T) {
	dir := t.TempDir()
	lib := filepath.Join(dir, "libcuda.so")
	if err := os.WriteFile(lib, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	spec := `cdiVersion: "0.6.0"
kind: gpu.tessera.dev/claim
containerEdits:
  env: ["NVIDIA_DRIVER_CAPABILITIES=all"]
  mounts:
  - hostPath: ` + lib + `
    containerPath: /usr/lib/libcuda.so
devices:
- name: uid-1-gpu-0
  containerEdits:
    env: ["NVIDIA_VISIBLE_DEVICES=GPU-0"]
    deviceNodes: [{path: /dev/nvidia0}]
- name: uid-1-gpu-1
  containerEdits:
    env: ["NVIDIA_VISIBLE_DEVICES=GPU-1"]
    deviceNodes: [{path: /dev/nvidia1}, {path: /dev/nvidiactl}]
- name: uid-1-shared
  containerEdits:
    mounts:
    - hostPath: ` + filepath.Join(dir, "mps", "pipe") + `
      containerPath: /tmp/nvidia-mps
`
	if err := os.WriteFile(filepath.Join(dir, "claim.yaml"), []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := map[string]struct {
		devices   []string
		want      ContainerEdits
		wantErr   bool
		wantMount string
	}{
		"no devices": {
			want: ContainerEdits{Env: []string{}, DeviceNodes: []string{}, Mounts: []string{}},
		},
		"spec edits once, then each device's": {
			devices: []string{"gpu.tessera.dev/claim=uid-1-gpu-0", "gpu.tessera.dev/claim=uid-1-gpu-1"},
			want: ContainerEdits{
				CDIDevices:  []string{"gpu.tessera.dev/claim=uid-1-gpu-0", "gpu.tessera.dev/claim=uid-1-gpu-1"},
				Env:         []string{"NVIDIA_DRIVER_CAPABILITIES=all", "NVIDIA_VISIBLE_DEVICES=GPU-0", "NVIDIA_VISIBLE_DEVICES=GPU-1"},
				DeviceNodes: []string{"/dev/nvidia0", "/dev/nvidia1", "/dev/nvidiactl"},
				Mounts:      []string{lib + ":/usr/lib/libcuda.so"},
			},
		},
		"mount source missing, as a runtime refuses it": {
			devices:   []string{"gpu.tessera.dev/claim=uid-1-shared"},
			wantErr:   true,
			wantMount: filepath.Join(dir, "mps", "pipe"),
		},
		"unknown device": {
			devices: []string{"gpu.tessera.dev/claim=nope"},
			wantErr: true,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := resolveEdits(dir, tc.devices)
			if (err != nil) != tc.wantErr {
				t.Fatalf("resolveEdits error = %v, want error %v", err, tc.wantErr)
			}
			if tc.wantErr {
				var mountErr *MountSourceError
				if tc.wantMount != "" && (!errors.As(err, &mountErr) || mountErr.HostPath != tc.wantMount || !errors.Is(err, fs.ErrNotExist)) {
					t.Errorf("error %v, want a missing mount source %s", err, tc.wantMount)
				}
				return
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("resolveEdits (-want +got):\n%s", diff)
			}
		})
	}
}

func TestBaseRequest(t *testing.T) {
	for in, want := range map[string]string{"gpu": "gpu", "gpu/mig": "gpu", "": ""} {
		if got := baseRequest(in); got != want {
			t.Errorf("baseRequest(%q) = %q, want %q", in, got, want)
		}
	}
}
