package realnode

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	tcdi "github.com/tessera-gpu/tessera/internal/cdi"
	"github.com/tessera-gpu/tessera/internal/driverroot"
)

// TestFakeDriverRootReadsAsARealInstall reads each layout's fake driver root
// with the plugin's own readers: the driver's majors and device file mode
// from its /proc, NVML and the driver binaries where the plugin looks for
// them, and no device node the kernel driver would not have created.
func TestFakeDriverRootReadsAsARealInstall(t *testing.T) {
	for _, name := range DriverLayoutNames() {
		layout := DriverLayouts[name]
		t.Run(name, func(t *testing.T) {
			root := filepath.Join(t.TempDir(), layout.Root)
			if err := writeDriverFiles(root, layout, 2); err != nil {
				t.Fatal(err)
			}
			d, err := tcdi.ReadDriver(filepath.Join(root, "proc"))
			if err != nil {
				t.Fatal(err)
			}
			want := tcdi.Driver{ProcRoot: filepath.Join(root, "proc"), GPUMajor: GPUMajor, UVMMajor: UVMMajor, CapsMajor: CapsMajor, FileMode: 0o666}
			if diff := cmp.Diff(want, d); diff != "" {
				t.Errorf("driver read from the fake /proc (-want +got):\n%s", diff)
			}
			r := driverroot.New(root)
			lib, err := r.NVML()
			if err != nil {
				t.Fatal(err)
			}
			if want := filepath.Join(root, layout.LibDir, "libnvidia-ml.so."+fakeDriverVersion); lib != want {
				t.Errorf("NVML found at %s, want %s", lib, want)
			}
			for _, b := range driverBinaries {
				if got, err := r.Binary(b); err != nil || got != filepath.Join(root, layout.BinDir, b) {
					t.Errorf("driver binary %s found at %q (%v), want it in %s", b, got, err, layout.BinDir)
				}
			}
			var dev []string
			err = filepath.WalkDir(filepath.Join(root, "dev"), func(path string, e fs.DirEntry, err error) error {
				if err == nil && path != filepath.Join(root, "dev") {
					dev = append(dev, strings.TrimPrefix(path, root))
				}
				return err
			})
			if err != nil || len(dev) > 0 {
				t.Errorf("fake driver root's /dev holds %v (%v) before its device nodes are made, want nothing", dev, err)
			}
		})
	}
}

// TestFakeDriverRootHasNoNodesTheDriverDoesNotCreate makes a whole fake root,
// device nodes included (as root, as make node-e2e runs): /dev holds the GPUs'
// and the control node, no UVM or MIG capability node.
func TestFakeDriverRootHasNoNodesTheDriverDoesNotCreate(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("device nodes need root (make node-e2e runs as root)")
	}
	root := t.TempDir()
	if err := MakeDriverRoot(root, DriverLayouts[DefaultDriverLayout], 2); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(filepath.Join(root, "dev"))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		if e.Type()&fs.ModeCharDevice == 0 {
			t.Errorf("/dev/%s is not a character device", e.Name())
		}
		got = append(got, e.Name())
	}
	if diff := cmp.Diff([]string{"nvidia0", "nvidia1", "nvidiactl"}, got); diff != "" {
		t.Errorf("fake driver root's /dev (-want +got):\n%s", diff)
	}
}

// TestMPSStandinReplacesThePlaceholders: in every layout, the plugin finds
// the stand-in as the driver's MPS control program and server, where the
// placeholders were, and a test pod can mount the control program from
// Layout.MPSControl.
func TestMPSStandinReplacesThePlaceholders(t *testing.T) {
	standin := filepath.Join(t.TempDir(), "mps-standin")
	if err := os.WriteFile(standin, []byte("\x7fELF stand-in"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range DriverLayoutNames() {
		layout := DriverLayouts[name]
		t.Run(name, func(t *testing.T) {
			l := NewLayout(t.TempDir(), layout)
			if err := writeDriverFiles(l.DriverRoot, layout, 1); err != nil {
				t.Fatal(err)
			}
			if err := InstallMPSStandin(l.DriverRoot, layout, standin); err != nil {
				t.Fatal(err)
			}
			r := driverroot.New(l.DriverRoot)
			for _, b := range mpsBinaries {
				got, err := r.Binary(b)
				if err != nil {
					t.Fatalf("driver binary %s: %v", b, err)
				}
				if data, err := os.ReadFile(got); err != nil || string(data) != "\x7fELF stand-in" {
					t.Errorf("%s holds %q (%v), want the stand-in", got, data, err)
				}
			}
			if got, _ := r.Binary(mpsBinaries[0]); l.MPSControl() != got {
				t.Errorf("Layout.MPSControl() = %s, want %s, where the plugin runs it from", l.MPSControl(), got)
			}
		})
	}
}
