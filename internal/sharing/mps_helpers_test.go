package sharing

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tessera-gpu/tessera/internal/sharing/mpsstandin"
)

// TestMain lets the test binary act as the stand-in nvidia-cuda-mps-control,
// its servers, and the launcher, when run under their names.
func TestMain(m *testing.M) {
	mpsstandin.Main(Launch)
	os.Exit(m.Run())
}

func writeExecutable(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o755); err != nil {
		t.Fatal(err)
	}
}

// shortTempDir is a temporary directory with a short path: a Unix socket's
// path holds at most 107 bytes, and t.TempDir's are long.
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "mps")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// standIn returns MPSDaemons on the stand-in nvidia-cuda-mps-control, with
// the stand-in launcher. Every process left under its root is killed when
// the test ends.
func standIn(t *testing.T) *MPSDaemons {
	t.Helper()
	bin, launcher := mpsstandin.Install(t)
	m := &MPSDaemons{Root: shortTempDir(t), Binary: bin, Launcher: []string{launcher}, StartTimeout: 5 * time.Second}
	t.Cleanup(func() { mpsstandin.EndPlugin(t, m.Root) })
	return m
}

// instance returns another plugin instance over the same daemons, as a
// rolling update's second plugin is; procRoot, when set, is its /proc.
func instance(m *MPSDaemons, procRoot string) *MPSDaemons {
	return &MPSDaemons{Root: m.Root, Binary: m.Binary, Launcher: m.Launcher, StartTimeout: m.StartTimeout, ProcRoot: procRoot}
}

// daemonPID is the PID the daemon wrote to its pipe directory (read by the
// test, which trusts it; the plugin never does).
func daemonPID(t *testing.T, m *MPSDaemons, id string) int {
	t.Helper()
	pid, err := readPID(m, id)
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

func readPID(m *MPSDaemons, id string) (int, error) {
	data, err := os.ReadFile(filepath.Join(DaemonDirs(m.Root, id).Pipe, mpsstandin.PIDFile))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(data)))
}

// starts counts the daemon starts in the daemon's log.
func starts(t *testing.T, m *MPSDaemons, id string) int {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(DaemonDirs(m.Root, id).Log, mpsstandin.LogFile))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(data), "Starting control daemon")
}

// containerQuery runs a control command as a process of the claim's
// container does: through the pipe directory it has mounted, held here as
// an open directory (a bind mount pins the directory, not its path).
func containerQuery(t *testing.T, m *MPSDaemons, mounted *os.File, command string) (string, error) {
	t.Helper()
	cmd := exec.Command(m.Binary)
	cmd.Env = append(os.Environ(), "CUDA_MPS_PIPE_DIRECTORY=/proc/self/fd/3")
	cmd.ExtraFiles = []*os.File{mounted}
	cmd.Stdin = strings.NewReader(command + "\n")
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// TestLockFileNamesAgree: the stand-in's tests wait on the lock this package
// takes.
func TestLockFileNamesAgree(t *testing.T) {
	if lockFile != mpsstandin.LockFile {
		t.Errorf("sharing locks %s, mpsstandin waits on %s", lockFile, mpsstandin.LockFile)
	}
}
