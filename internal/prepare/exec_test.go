package prepare

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"k8s.io/klog/v2/ktesting"

	configapi "github.com/tessera-gpu/tessera/api/config/v1alpha1"
)

// fakeMPSControl behaves like nvidia-cuda-mps-control as far as the plugin
// can tell: "-d" starts a daemon that creates its control pipe, "quit" on
// stdin stops it.
const fakeMPSControl = `#!/bin/sh
if [ "$1" = "-d" ]; then
	[ -n "$CUDA_VISIBLE_DEVICES" ] || { echo "no CUDA_VISIBLE_DEVICES" >&2; exit 1; }
	echo "$CUDA_VISIBLE_DEVICES" > "$CUDA_MPS_PIPE_DIRECTORY/control"
	exit 0
fi
read cmd
[ "$cmd" = quit ] && rm -f "$CUDA_MPS_PIPE_DIRECTORY/control"
`

// TestMPSDaemonsLaunchWithPrivateShm: with a launcher, the daemon is
// started through it with its own /dev/shm directory.
func TestMPSDaemonsLaunchWithPrivateShm(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "nvidia-cuda-mps-control")
	writeFile(t, bin, fakeMPSControl)
	launcher := filepath.Join(dir, "launcher")
	// The stand-in launcher records its arguments and runs the command
	// after "--", as "dra-kubelet-plugin mps-launch" does.
	writeFile(t, launcher, `#!/bin/sh
echo "$@" > "$(dirname "$0")/launched"
while [ "$1" != "--" ]; do shift; done
shift
exec "$@"
`)
	for _, f := range []string{bin, launcher} {
		if err := os.Chmod(f, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	root := t.TempDir()
	m := &MPSDaemons{Root: root, Binary: bin, Launcher: []string{launcher, "mps-launch"}}
	d := MPSDaemon{GPUUUID: "GPU-1", PipeDir: filepath.Join(root, "GPU-1", "pipe"), LogDir: filepath.Join(root, "GPU-1", "log"), ShmDir: filepath.Join(root, "GPU-1", "shm")}
	if err := m.Start(ctx, d); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(dir, "launched"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "mps-launch --shm " + d.ShmDir + " -- " + bin + " -d"; strings.TrimSpace(string(got)) != want {
		t.Errorf("launcher ran with %q, want %q", got, want)
	}
	if fi, err := os.Stat(d.ShmDir); err != nil || !fi.IsDir() {
		t.Errorf("shm directory not created: %v", err)
	}
	if err := m.Stop(ctx, "GPU-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(d.ShmDir); !os.IsNotExist(err) {
		t.Errorf("shm directory left after stop: %v", err)
	}
}

func TestMPSDaemons(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	bin := filepath.Join(t.TempDir(), "nvidia-cuda-mps-control")
	writeFile(t, bin, fakeMPSControl)
	if err := os.Chmod(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	m := &MPSDaemons{Root: root, Binary: bin}
	d := MPSDaemon{GPUUUID: "GPU-1", PipeDir: filepath.Join(root, "GPU-1", "pipe"), LogDir: filepath.Join(root, "GPU-1", "log")}
	for range 2 { // starting a running daemon is not an error
		if err := m.Start(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	running, err := m.Running(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"GPU-1"}, running); diff != "" {
		t.Errorf("Running (-want +got):\n%s", diff)
	}
	got, _ := os.ReadFile(filepath.Join(d.PipeDir, "control"))
	if strings.TrimSpace(string(got)) != "GPU-1" {
		t.Errorf("daemon saw CUDA_VISIBLE_DEVICES=%q, want GPU-1", got)
	}
	for range 2 { // stopping a stopped daemon is not an error
		if err := m.Stop(ctx, "GPU-1"); err != nil {
			t.Fatal(err)
		}
	}
	if running, _ := m.Running(ctx); len(running) != 0 {
		t.Errorf("Running after Stop = %v", running)
	}
}

func TestNvidiaSMITimeSlice(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "nvidia-smi")
	writeFile(t, bin, "#!/bin/sh\necho \"$@\" >> "+filepath.Join(dir, "calls")+"\n")
	if err := os.Chmod(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	smi := NvidiaSMI{Binary: bin}
	for _, iv := range []configapi.TimeSliceInterval{configapi.LongTimeSlice, configapi.DefaultTimeSlice} {
		if err := smi.SetTimeSlice(ctx, "GPU-1", iv); err != nil {
			t.Fatal(err)
		}
	}
	if err := smi.SetTimeSlice(ctx, "GPU-1", "Forever"); err == nil {
		t.Error("unknown interval accepted")
	}
	calls, _ := os.ReadFile(filepath.Join(dir, "calls"))
	want := "compute-policy -i GPU-1 --set-timeslice=3\ncompute-policy -i GPU-1 --set-timeslice=0\n"
	if diff := cmp.Diff(want, string(calls)); diff != "" {
		t.Errorf("nvidia-smi calls (-want +got):\n%s", diff)
	}
}
