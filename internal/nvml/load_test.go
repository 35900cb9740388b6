package nvml

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tessera-gpu/tessera/internal/driverroot"
)

// stubNVML is the smallest libnvidia-ml.so.1 that go-nvml's Init and
// Discover's first calls accept: the symbols they call, with nvml.h's
// signatures, reporting a driver whose version the test picks and no GPUs.
// go-nvml calls the _v2 entry points when the library exports them, as
// the real one does.
const stubNVML = `
typedef int nvmlReturn_t;
nvmlReturn_t nvmlInit_v2(void) { return 0; }
nvmlReturn_t nvmlInitWithFlags(unsigned int flags) { return 0; }
nvmlReturn_t nvmlShutdown(void) { return 0; }
const char *nvmlErrorString(nvmlReturn_t r) { return r == 0 ? "Success" : "Stub error"; }
nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
	const char *v = STUB_VERSION;
	unsigned int i = 0;
	for (; v[i] && i + 1 < length; i++) version[i] = v[i];
	version[i] = 0;
	return 0;
}
nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *v) { *v = 12040; return 0; }
nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *n) { *n = 0; return 0; }
`

// buildStubNVML compiles the stub into dir/name, reporting version as the
// driver version, so that a test can tell which copy was loaded.
func buildStubNVML(t *testing.T, dir, name, version string) {
	t.Helper()
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		t.Skip("gcc not found: this test builds a stub libnvidia-ml.so.1 with gcc to load NVML through the real go-nvml backend; install gcc to run it")
	}
	src := filepath.Join(t.TempDir(), "nvml.c")
	if err := os.WriteFile(src, []byte(stubNVML), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(gcc, "-shared", "-fPIC", "-Wl,-soname,libnvidia-ml.so.1",
		fmt.Sprintf("-DSTUB_VERSION=%q", version), "-o", filepath.Join(dir, name), src).CombinedOutput()
	if err != nil {
		t.Fatalf("build stub NVML: %v: %s", err, out)
	}
}

// childRootEnv carries the driver root to the child process of
// TestRealBackendLoadsNVMLFromDriverRoot.
const childRootEnv = "TESSERA_TEST_NVML_DRIVER_ROOT"

// TestRealBackendLoadsNVMLFromDriverRoot builds a stub NVML into a fake
// driver root of each layout the plugin supports, and has the real
// backend (go-nvml, cgo, dlopen) find it through the plugin's own lookup,
// initialise it and discover the node. Each layout runs in a process of
// its own, as the plugin does: go-nvml binds NVML's symbols into the
// process once, so a second library in one process would be called
// through the first one's bindings.
func TestRealBackendLoadsNVMLFromDriverRoot(t *testing.T) {
	lib := driverroot.LibraryDirs()[0] // usr/lib/<multiarch triplet>
	tests := map[string]struct {
		dir     string // relative to the root
		file    string // the library file; libnvidia-ml.so.1 links to it
		link    string // the link's target, when file is not libnvidia-ml.so.1
		version string
	}{
		// The driver on the host (driver root /): Debian's ldconfig link to
		// the versioned file.
		"host, Debian layout": {dir: lib, file: "libnvidia-ml.so.550.54.15", link: "libnvidia-ml.so.550.54.15", version: "550.54.15"},
		"host, RHEL layout":   {dir: "usr/lib64", file: "libnvidia-ml.so.1", version: "560.35.03"},
		// The GPU operator's /run/nvidia/driver is a driver container's
		// file system: an absolute link must resolve inside it.
		"GPU operator driver container": {dir: lib, file: "libnvidia-ml.so.570.86.15", link: "/" + lib + "/libnvidia-ml.so.570.86.15", version: "570.86.15"},
		"/usr/local/nvidia/lib64":       {dir: "usr/local/nvidia/lib64", file: "libnvidia-ml.so.1", version: "535.183.01"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			root := filepath.Join(t.TempDir(), "run", "nvidia", "driver")
			buildStubNVML(t, filepath.Join(root, tc.dir), tc.file, tc.version)
			if tc.link != "" {
				if err := os.Symlink(tc.link, filepath.Join(root, tc.dir, driverroot.NVMLLibrary)); err != nil {
					t.Fatal(err)
				}
			}
			cmd := exec.Command(os.Args[0], "-test.run=^TestLoadNVMLChild$", "-test.v")
			cmd.Env = append(os.Environ(), childRootEnv+"="+root)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("child loading NVML from %s: %v\n%s", root, err, out)
			}
			want := fmt.Sprintf("loaded NVML: driver %s, CUDA 12.4, 0 GPUs", tc.version)
			if !strings.Contains(string(out), want) {
				t.Errorf("child output lacks %q:\n%s", want, out)
			}
		})
	}
}

// TestLoadNVMLChild is the child of TestRealBackendLoadsNVMLFromDriverRoot;
// run on its own it does nothing.
func TestLoadNVMLChild(t *testing.T) {
	root := os.Getenv(childRootEnv)
	if root == "" {
		t.Skip("child of TestRealBackendLoadsNVMLFromDriverRoot")
	}
	lib, err := Open(Backend{DriverRoot: root})
	if err != nil {
		t.Fatal(err)
	}
	node, err := lib.Discover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := lib.Shutdown(); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("loaded NVML: driver %s, CUDA %s, %d GPUs\n", node.DriverVersion, node.CUDADriverVersion, len(node.GPUs))
}

func TestRealBackendErrors(t *testing.T) {
	t.Run("no library in the root names every path tried", func(t *testing.T) {
		root := t.TempDir()
		_, err := Open(Backend{DriverRoot: root})
		if err == nil {
			t.Fatal("Open succeeded on a root without NVML")
		}
		for _, dir := range driverroot.LibraryDirs() {
			if want := filepath.Join(root, dir, driverroot.NVMLLibrary); !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not name %s", err, want)
			}
		}
	})
	t.Run("a file that is no library says why dlopen refused it", func(t *testing.T) {
		root := t.TempDir()
		path := filepath.Join(root, "usr/lib64", driverroot.NVMLLibrary)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(strings.Repeat("not an ELF file\n", 16)), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := Open(Backend{DriverRoot: root})
		if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "invalid ELF header") {
			t.Errorf("Open = %v, want an error naming %s and dlopen's reason", err, path)
		}
	})
}
