package driverroot

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// file is one entry of a fake driver root: a regular file with mode, or a
// symbolic link when link is set.
type file struct {
	mode os.FileMode
	link string
}

func makeRoot(t *testing.T, files map[string]file) string {
	t.Helper()
	root := t.TempDir()
	for rel, f := range files {
		path := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if f.link != "" {
			if err := os.Symlink(f.link, path); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.WriteFile(path, []byte("x"), f.mode); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestNVMLLayouts(t *testing.T) {
	lib := "usr/lib/" + multiarchTriplet()
	tests := map[string]struct {
		files map[string]file
		want  string // relative to the root
	}{
		"Debian host, linked to the versioned file as ldconfig does": {
			files: map[string]file{
				lib + "/libnvidia-ml.so.550.54.15": {mode: 0o644},
				lib + "/libnvidia-ml.so.1":         {link: "libnvidia-ml.so.550.54.15"},
			},
			want: lib + "/libnvidia-ml.so.550.54.15",
		},
		"RHEL host": {
			files: map[string]file{"usr/lib64/libnvidia-ml.so.1": {mode: 0o644}},
			want:  "usr/lib64/libnvidia-ml.so.1",
		},
		"GPU operator root with an absolute link, resolved inside the root": {
			files: map[string]file{
				lib + "/libnvidia-ml.so.570.86.15": {mode: 0o644},
				lib + "/libnvidia-ml.so.1":         {link: "/" + lib + "/libnvidia-ml.so.570.86.15"},
			},
			want: lib + "/libnvidia-ml.so.570.86.15",
		},
		"merged /usr: /lib64 links to usr/lib64": {
			files: map[string]file{
				"lib64":                       {link: "usr/lib64"},
				"usr/lib64/libnvidia-ml.so.1": {mode: 0o644},
			},
			want: "usr/lib64/libnvidia-ml.so.1",
		},
		"/usr/local/nvidia/lib64": {
			files: map[string]file{"usr/local/nvidia/lib64/libnvidia-ml.so.1": {mode: 0o644}},
			want:  "usr/local/nvidia/lib64/libnvidia-ml.so.1",
		},
		"a link that climbs out with .. stays in the root": {
			files: map[string]file{
				"usr/lib64/libnvidia-ml.so.1":              {link: "../../../../../../usr/local/nvidia/lib64/libnvidia-ml.so.1"},
				"usr/local/nvidia/lib64/libnvidia-ml.so.1": {mode: 0o644},
			},
			want: "usr/local/nvidia/lib64/libnvidia-ml.so.1",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			root := makeRoot(t, tc.files)
			got, err := New(root).NVML()
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(filepath.Join(root, tc.want), got); diff != "" {
				t.Errorf("NVML path (-want +got):\n%s", diff)
			}
		})
	}
}

func TestNVMLNotFoundNamesEveryPathTried(t *testing.T) {
	root := makeRoot(t, map[string]file{
		// A dangling link and a directory are not the library.
		"usr/lib64/libnvidia-ml.so.1":           {link: "/nowhere/libnvidia-ml.so.1"},
		"usr/lib/libnvidia-ml.so.1/placeholder": {mode: 0o644},
	})
	_, err := New(root).NVML()
	if !IsNotFound(err) {
		t.Fatalf("NVML() = %v, want a NotFoundError", err)
	}
	for _, dir := range LibraryDirs() {
		if want := filepath.Join(root, dir, NVMLLibrary); !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
}

func TestBinary(t *testing.T) {
	root := makeRoot(t, map[string]file{
		"usr/bin/nvidia-smi":                       {mode: 0o644}, // not executable
		"usr/local/nvidia/bin/nvidia-smi":          {mode: 0o755},
		"usr/bin/nvidia-cuda-mps-control":          {mode: 0o755},
		"usr/lib64/libnvidia-ml.so.1":              {mode: 0o644},
		"usr/local/nvidia/lib64/libnvidia-ml.so.1": {mode: 0o644},
	})
	r := New(root)
	for name, want := range map[string]string{
		"nvidia-smi":              "usr/local/nvidia/bin/nvidia-smi",
		"nvidia-cuda-mps-control": "usr/bin/nvidia-cuda-mps-control",
	} {
		got, err := r.Binary(name)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(filepath.Join(root, want), got); diff != "" {
			t.Errorf("Binary(%s) (-want +got):\n%s", name, diff)
		}
	}
	if _, err := r.Binary("nvidia-cuda-mps-server"); !IsNotFound(err) || !strings.Contains(err.Error(), filepath.Join(root, "usr/bin/nvidia-cuda-mps-server")) {
		t.Errorf("Binary of a missing file = %v, want a NotFoundError naming %s", err, filepath.Join(root, "usr/bin/nvidia-cuda-mps-server"))
	}

	want := []string{
		"LD_LIBRARY_PATH=" + filepath.Join(root, "usr/lib64") + ":" + filepath.Join(root, "usr/local/nvidia/lib64"),
		"PATH=" + filepath.Join(root, "usr/bin") + ":" + filepath.Join(root, "usr/local/nvidia/bin") + ":/usr/bin:/bin",
	}
	if diff := cmp.Diff(want, r.Env("/usr/bin:/bin")); diff != "" {
		t.Errorf("Env (-want +got):\n%s", diff)
	}
}
