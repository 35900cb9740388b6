package prepare

import (
	"os"
	"path/filepath"
	"testing"

	"k8s.io/klog/v2/ktesting"

	"github.com/tessera-gpu/tessera/internal/hardware"
	"github.com/tessera-gpu/tessera/internal/sharing/mpsstandin"
)

// TestSimulatedDriver prepares on a mock backend without any driver files,
// as the local cluster's plugins do.
func TestSimulatedDriver(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	e := newTestEnv(t, "dgxh200", 2)
	root := t.TempDir()
	hw := hardware.Simulated(ctx, e.lib, hardware.Config{DriverRoot: root, StateDir: e.stateDir})
	p, err := newDiscovered(ctx, WithHardware(hw), WithNodeName(nodeName), WithCDIRoot(e.cdiRoot), WithStateDir(e.stateDir), WithDriverRoot(root))
	if err != nil {
		t.Fatal(err)
	}
	c := makeClaim("sim").Device("m", "gpu-0-mig-1g18gb-5").Share("s", "gpu-1-shared", "1Gi", "10", "x").Obj()
	res := p.Prepare(ctx, c)
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	view := viewCDI(t, e.cdiRoot, res.Devices[0].CDIDeviceIDs[0])
	if len(view.DeviceNodes) != 6 {
		t.Errorf("MIG device nodes %v, want the GPU, two capabilities and three control nodes", view.DeviceNodes)
	}
	if err := p.Unprepare(ctx, ref(c)); err != nil {
		t.Fatal(err)
	}
	if st := e.state(); len(st.MIG) != 0 || len(st.CDI) != 0 || len(st.Claims) != 0 {
		t.Errorf("after Unprepare: %+v", st)
	}
}

// TestSimulatedDriverWithDriverMPS: with Config.DriverMPS a mock backend's
// shares get real daemons, run from the driver root's
// nvidia-cuda-mps-control (here the stand-in) through the plugin's
// launcher, which a container's process reaches through its mounted pipe
// directory; without it the simulated driver keeps them in memory and no
// daemon answers there.
func TestSimulatedDriverWithDriverMPS(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the launcher gives each daemon a tmpfs /dev/shm in a mount namespace of its own: needs root")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	program, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	for name, driverMPS := range map[string]bool{"driver MPS": true, "simulated MPS": false} {
		t.Run(name, func(t *testing.T) {
			_, ctx := ktesting.NewTestContext(t)
			e := newTestEnv(t, "dgxh200", 2)
			// A Unix socket's path holds at most 107 bytes.
			state, err := os.MkdirTemp("", "state")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = os.RemoveAll(state) })
			e.stateDir = state
			t.Cleanup(func() { mpsstandin.EndPlugin(t, filepath.Join(state, "mps")) })
			root := t.TempDir()
			for _, n := range []string{mpsstandin.ControlName, mpsstandin.ServerName} {
				path := filepath.Join(root, "usr", "bin", n)
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, program, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			bin, launcher := mpsstandin.Install(t)
			hw := hardware.Simulated(ctx, e.lib, hardware.Config{DriverRoot: root, StateDir: e.stateDir, DriverMPS: driverMPS, MPSLauncher: []string{launcher}})
			p, err := newDiscovered(ctx, WithHardware(hw), WithNodeName(nodeName), WithCDIRoot(e.cdiRoot), WithStateDir(e.stateDir), WithDriverRoot(root))
			if err != nil {
				t.Fatal(err)
			}
			c := makeClaim("sim").Share("s", "gpu-1-shared", "1Gi", "10", "x").Obj()
			res := p.Prepare(ctx, c)
			if res.Err != nil {
				t.Fatal(res.Err)
			}
			got, err := containerAsks(bin, mountedPipe(t, e, res.Devices[0].CDIDeviceIDs[0]), "get_default_active_thread_percentage")
			if driverMPS && (err != nil || got != "10.0") {
				t.Errorf("the container's MPS client got %q (%v), want the claim's 10.0 from its daemon", got, err)
			}
			if !driverMPS && err == nil {
				t.Errorf("the container's MPS client got %q from a daemon, want none with simulated MPS", got)
			}
			if err := p.Unprepare(ctx, ref(c)); err != nil {
				t.Fatal(err)
			}
		})
	}
}
