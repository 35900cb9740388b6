package prepare

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	oci "github.com/opencontainers/runtime-spec/specs-go"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/klog/v2/ktesting"
	"tags.cncf.io/container-device-interface/pkg/cdi"
	cdispec "tags.cncf.io/container-device-interface/specs-go"

	"github.com/tessera-gpu/tessera/internal/driverroot"
	"github.com/tessera-gpu/tessera/internal/hardware"
)

// containerRoot lays out, under a fresh directory, the driver root as the
// plugin's container sees it: the test env's /proc (majors and MIG
// capabilities) under proc/, and nothing under dev/.
func (e *testEnv) containerRoot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	if err := os.Rename(e.procRoot, filepath.Join(root, "proc")); err != nil {
		t.Fatal(err)
	}
	return root
}

// specNodes returns the device nodes of one CDI device as the CDI library
// reads them back.
func specNodes(t *testing.T, cdiRoot, id string) []*cdispec.DeviceNode {
	t.Helper()
	cache, err := cdi.NewCache(cdi.WithSpecDirs(cdiRoot), cdi.WithAutoRefresh(false))
	if err != nil {
		t.Fatal(err)
	}
	dev := cache.GetDevice(id)
	if dev == nil {
		t.Fatalf("no CDI device %s", id)
	}
	// The runtime must be able to apply the spec on a host that lacks
	// every one of the nodes: none of the host paths exists here.
	if _, err := cache.InjectDevices(&oci.Spec{}, id); err != nil {
		t.Errorf("inject %s where the host has none of its nodes: %v", id, err)
	}
	return dev.ContainerEdits.DeviceNodes
}

// TestDriverRoots prepares whole and MIG devices with the host's driver
// root apart from where the plugin sees it, for every layout, and checks
// that every path in the spec is the host's and every node says what it
// is, so the runtime creates it.
func TestDriverRoots(t *testing.T) {
	for name, hostRoot := range map[string]string{
		"driver on the host":            "/",
		"GPU operator driver container": "/run/nvidia/driver",
	} {
		t.Run(name, func(t *testing.T) {
			_, ctx := ktesting.NewTestContext(t)
			e := newTestEnv(t, "dgxh200", 2)
			container := e.containerRoot(t)
			hw := hardware.Driver(ctx, e.lib, hardware.Config{DriverRoot: container, StateDir: e.stateDir})
			p, err := newDiscovered(ctx, WithHardware(hw), withMPS(e.mps), withTimeSlicer(e.slicer), WithNodeName(nodeName), WithCDIRoot(e.cdiRoot),
				WithStateDir(e.stateDir), WithDriverRoot(hostRoot))
			if err != nil {
				t.Fatal(err)
			}
			c := makeClaim("roots").Device("g", "gpu-0").Device("m", "gpu-1-mig-1g18gb-5").Obj()
			res := p.Prepare(ctx, c)
			if res.Err != nil {
				t.Fatal(res.Err)
			}
			type node struct {
				Path, HostPath string
				Major, Minor   int64
				Mode           os.FileMode
			}
			var got []node
			for _, d := range res.Devices {
				for _, n := range specNodes(t, e.cdiRoot, d.CDIDeviceIDs[0]) {
					if n.Type != "c" || n.FileMode == nil {
						t.Errorf("node %s: type %q, mode %v; want c and a mode", n.Path, n.Type, n.FileMode)
						continue
					}
					got = append(got, node{n.Path, n.HostPath, n.Major, n.Minor, *n.FileMode})
				}
			}
			h := func(p string) string { return filepath.Join(hostRoot, p) }
			mig, err := e.lib.MIGDevices(ctx, 1)
			if err != nil {
				t.Fatal(err)
			}
			if len(mig) != 1 {
				t.Fatalf("GPU 1 has MIG devices %v, want one", mig)
			}
			gi := mig[0].GPUInstanceID
			want := []node{
				{"/dev/nvidia0", h("/dev/nvidia0"), 195, 0, 0o666},
				{"/dev/nvidiactl", h("/dev/nvidiactl"), 195, 255, 0o666},
				{"/dev/nvidia-uvm", h("/dev/nvidia-uvm"), 237, 0, 0o666},
				{"/dev/nvidia-uvm-tools", h("/dev/nvidia-uvm-tools"), 237, 1, 0o666},
				{"/dev/nvidia1", h("/dev/nvidia1"), 195, 1, 0o666},
				{capPath(capMinor(1, gi, -1)), h(capPath(capMinor(1, gi, -1))), 236, int64(capMinor(1, gi, -1)), 0o444},
				{capPath(capMinor(1, gi, 0)), h(capPath(capMinor(1, gi, 0))), 236, int64(capMinor(1, gi, 0)), 0o444},
				{"/dev/nvidiactl", h("/dev/nvidiactl"), 195, 255, 0o666},
				{"/dev/nvidia-uvm", h("/dev/nvidia-uvm"), 237, 0, 0o666},
				{"/dev/nvidia-uvm-tools", h("/dev/nvidia-uvm-tools"), 237, 1, 0o666},
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("device nodes (-want +got):\n%s", diff)
			}
			for _, n := range got {
				if strings.HasPrefix(n.HostPath, container) {
					t.Errorf("host path %s is where the plugin sees the root, not the host's", n.HostPath)
				}
			}
		})
	}
}

func capPath(minor int) string { return "/dev/nvidia-caps/nvidia-cap" + strconv.Itoa(minor) }

// TestDriverWithoutUVM fails the claim, not the plugin, with what to do.
func TestDriverWithoutUVM(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	e := newTestEnv(t, "dgxh200", 1)
	writeFile(t, filepath.Join(e.procRoot, "devices"), "Character devices:\n195 nvidia\n")
	p := e.mustPreparer(ctx)
	res := p.Prepare(ctx, makeClaim("no-uvm").Device("g", "gpu-0").Obj())
	if res.Err == nil || !strings.Contains(res.Err.Error(), "load the nvidia-uvm module") {
		t.Errorf("Prepare = %v, want an error saying to load nvidia-uvm", res.Err)
	}
}

// TestTimeSlicingRunsTheDriversNvidiaSMI runs the default time slicer: the
// driver root's nvidia-smi (a script here), with the driver's library and
// binary directories on its search paths.
func TestTimeSlicingRunsTheDriversNvidiaSMI(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	e := newTestEnv(t, "dgxh200", 1)
	container := e.containerRoot(t)
	record := filepath.Join(t.TempDir(), "nvidia-smi.log")
	writeFile(t, filepath.Join(container, "usr/lib64", driverroot.NVMLLibrary), "stub")
	writeFile(t, filepath.Join(container, "usr/bin/nvidia-smi"),
		"#!/bin/sh\necho \"LD_LIBRARY_PATH=$LD_LIBRARY_PATH\" > "+record+"\necho \"PATH=$PATH\" >> "+record+"\necho \"$@\" >> "+record+"\n")
	if err := os.Chmod(filepath.Join(container, "usr/bin/nvidia-smi"), 0o755); err != nil {
		t.Fatal(err)
	}
	hw := hardware.Driver(ctx, e.lib, hardware.Config{DriverRoot: container, StateDir: e.stateDir})
	p, err := newDiscovered(ctx, WithHardware(hw), withMPS(e.mps), WithNodeName(nodeName), WithCDIRoot(e.cdiRoot), WithStateDir(e.stateDir), WithDriverRoot("/"))
	if err != nil {
		t.Fatal(err)
	}
	c := makeClaim("ts").Share("s", "gpu-0-shared", "1Gi", "10", "share-1").
		Config(resourceapi.AllocationConfigSourceClass, timeSlicingLong).Obj()
	if res := p.Prepare(ctx, c); res.Err != nil {
		t.Fatal(res.Err)
	}
	out, err := os.ReadFile(record)
	if err != nil {
		t.Fatalf("the driver's nvidia-smi did not run: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 3 {
		t.Fatalf("nvidia-smi recorded %q", out)
	}
	if want := "LD_LIBRARY_PATH=" + filepath.Join(container, "usr/lib64"); lines[0] != want {
		t.Errorf("nvidia-smi ran with %s, want %s", lines[0], want)
	}
	if want := "PATH=" + filepath.Join(container, "usr/bin") + ":"; !strings.HasPrefix(lines[1], want) {
		t.Errorf("nvidia-smi ran with %s, want it to start with %s", lines[1], want)
	}
	if !strings.Contains(lines[2], "--set-timeslice=3") {
		t.Errorf("nvidia-smi ran with arguments %q, want the long time slice", lines[2])
	}
}
