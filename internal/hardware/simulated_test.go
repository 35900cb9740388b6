package hardware

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/tessera-gpu/tessera/internal/sharing"
)

// A simulated node's daemons keep the directories a claim's CDI spec
// mounts: a real container runtime refuses a mount whose source is missing.
func TestSimulatedMPSKeepsDaemonDirs(t *testing.T) {
	root := t.TempDir()
	f := NewSimulatedMPS(root)
	if err := f.Start(t.Context(), sharing.Daemon{ID: "claim-1", GPUUUID: "GPU-0"}); err != nil {
		t.Fatal(err)
	}
	dirs := sharing.DaemonDirs(root, "claim-1")
	for _, dir := range []string{dirs.Pipe, dirs.Log, dirs.Shm} {
		if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
			t.Errorf("started daemon lacks %s: %v", dir, err)
		}
	}
	if err := f.Stop(t.Context(), "claim-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "claim-1")); !os.IsNotExist(err) {
		t.Errorf("stopped daemon's directories remain: %v", err)
	}
}
