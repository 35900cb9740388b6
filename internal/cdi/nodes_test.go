package cdi

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// procDevices is /proc/devices of a node with the driver, UVM and MIG
// capabilities loaded, as the kernel prints it (majors of the dynamically
// allocated ones vary from host to host).
const procDevices = `Character devices:
  1 mem
  4 tty
195 nvidia-frontend
236 nvidia-caps
237 nvidia-uvm
238 nvidia-caps-imex-channels

Block devices:
  8 sd
237 nvidia-uvm
`

func writeProc(t *testing.T, files map[string]string) string {
	t.Helper()
	proc := t.TempDir()
	for rel, content := range files {
		path := filepath.Join(proc, rel)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return proc
}

func TestReadDriver(t *testing.T) {
	tests := map[string]struct {
		files   map[string]string
		want    Driver // without ProcRoot
		wantErr string
	}{
		"driver, UVM and caps loaded, no params": {
			files: map[string]string{"devices": procDevices},
			want:  Driver{GPUMajor: 195, UVMMajor: 237, CapsMajor: 236, FileMode: 0o666},
		},
		"newer driver names its major nvidia; params say 0660": {
			files: map[string]string{
				"devices":              "Character devices:\n195 nvidia\n507 nvidia-uvm\n",
				"driver/nvidia/params": "ResmanDebugLevel: 4294967295\nDeviceFileUID: 0\nDeviceFileGID: 44\nDeviceFileMode: 432\n",
			},
			want: Driver{GPUMajor: 195, UVMMajor: 507, FileMode: 0o660},
		},
		"params with the NVreg_ prefix": {
			files: map[string]string{
				"devices":              "Character devices:\n195 nvidia\n",
				"driver/nvidia/params": "NVreg_DeviceFileMode: 438\n",
			},
			want: Driver{GPUMajor: 195, FileMode: 0o666},
		},
		"no NVIDIA driver": {
			files:   map[string]string{"devices": "Character devices:\n  1 mem\n"},
			wantErr: "is the NVIDIA kernel driver loaded?",
		},
		"no /proc/devices": {
			files:   map[string]string{},
			wantErr: "no such file",
		},
		"garbled mode": {
			files: map[string]string{
				"devices":              "Character devices:\n195 nvidia\n",
				"driver/nvidia/params": "DeviceFileMode: rw\n",
			},
			wantErr: `DeviceFileMode "rw"`,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			proc := writeProc(t, tc.files)
			got, err := ReadDriver(proc)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ReadDriver = %v, want an error with %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.want.ProcRoot = proc
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("ReadDriver (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDriverNodes(t *testing.T) {
	d := Driver{GPUMajor: 195, UVMMajor: 237, CapsMajor: 236, FileMode: 0o666}
	if diff := cmp.Diff(DeviceNode{Path: "/dev/nvidia3", Major: 195, Minor: 3, FileMode: 0o666}, d.GPU(3)); diff != "" {
		t.Errorf("GPU(3) (-want +got):\n%s", diff)
	}
	control, err := d.Control()
	if err != nil {
		t.Fatal(err)
	}
	want := []DeviceNode{
		{Path: "/dev/nvidiactl", Major: 195, Minor: 255, FileMode: 0o666},
		{Path: "/dev/nvidia-uvm", Major: 237, Minor: 0, FileMode: 0o666},
		{Path: "/dev/nvidia-uvm-tools", Major: 237, Minor: 1, FileMode: 0o666},
	}
	if diff := cmp.Diff(want, control); diff != "" {
		t.Errorf("Control (-want +got):\n%s", diff)
	}
	noUVM := Driver{ProcRoot: "/proc", GPUMajor: 195}
	if _, err := noUVM.Control(); err == nil || !strings.Contains(err.Error(), "nvidia-uvm") {
		t.Errorf("Control without UVM = %v, want an error naming nvidia-uvm", err)
	}
}

func TestMIGCapabilities(t *testing.T) {
	for name, tc := range map[string]struct {
		files     map[string]string
		capsMajor int64
		want      []DeviceNode
		wantErr   string
	}{
		"found": {
			files: map[string]string{
				"gpu1/mig/gi3/access":     "DeviceFileMinor: 30\nDeviceFileMode: 292\nDeviceFileModify: 1\n",
				"gpu1/mig/gi3/ci0/access": "DeviceFileMinor: 31\nDeviceFileMode: 256\nDeviceFileModify: 1\n",
			},
			capsMajor: 236,
			want: []DeviceNode{
				{Path: "/dev/nvidia-caps/nvidia-cap30", Major: 236, Minor: 30, FileMode: 0o444},
				{Path: "/dev/nvidia-caps/nvidia-cap31", Major: 236, Minor: 31, FileMode: 0o400},
			},
		},
		"nvidia-caps not loaded": {
			files: map[string]string{
				"gpu1/mig/gi3/access":     "DeviceFileMinor: 30\nDeviceFileMode: 292\n",
				"gpu1/mig/gi3/ci0/access": "DeviceFileMinor: 31\nDeviceFileMode: 292\n",
			},
			wantErr: `no "nvidia-caps" character device`,
		},
		"missing ci": {
			files:     map[string]string{"gpu1/mig/gi3/access": "DeviceFileMinor: 30\nDeviceFileMode: 292\n"},
			capsMajor: 236,
			wantErr:   "ci0/access",
		},
		"garbled minor": {
			files: map[string]string{
				"gpu1/mig/gi3/access":     "DeviceFileMinor: x\nDeviceFileMode: 292\n",
				"gpu1/mig/gi3/ci0/access": "DeviceFileMinor: 31\nDeviceFileMode: 292\n",
			},
			capsMajor: 236,
			wantErr:   `DeviceFileMinor "x"`,
		},
		"no mode": {
			files: map[string]string{
				"gpu1/mig/gi3/access":     "DeviceFileMinor: 30\n",
				"gpu1/mig/gi3/ci0/access": "DeviceFileMinor: 31\nDeviceFileMode: 292\n",
			},
			capsMajor: 236,
			wantErr:   "no DeviceFileMode line",
		},
	} {
		t.Run(name, func(t *testing.T) {
			files := map[string]string{}
			for rel, content := range tc.files {
				files[filepath.Join("driver/nvidia/capabilities", rel)] = content
			}
			d := Driver{ProcRoot: writeProc(t, files), GPUMajor: 195, CapsMajor: tc.capsMajor}
			got, err := d.MIGCapabilities(1, 3, 0)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("MIGCapabilities = %v, want an error with %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}
