package prepare

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/klog/v2/ktesting"

	"github.com/tessera-gpu/tessera/internal/sharing"
	"github.com/tessera-gpu/tessera/internal/sharing/mpsstandin"
)

// TestMain lets the test binary act as the stand-in nvidia-cuda-mps-control
// and the MPS launcher, when run under their names.
func TestMain(m *testing.M) {
	mpsstandin.Main(sharing.Launch)
	os.Exit(m.Run())
}

// realMPS is how the plugin runs MPS daemons on a node, on the stand-in
// nvidia-cuda-mps-control, in a new state directory: each call of the
// function it returns is what one plugin process holds.
func (e *testEnv) realMPS(t *testing.T) func() *sharing.MPSDaemons {
	t.Helper()
	// A Unix socket's path holds at most 107 bytes, and t.TempDir's are
	// long.
	dir, err := os.MkdirTemp("", "state")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	e.stateDir = dir
	bin, launcher := mpsstandin.Install(t)
	root := filepath.Join(e.stateDir, "mps")
	t.Cleanup(func() { mpsstandin.EndPlugin(t, root) })
	return func() *sharing.MPSDaemons {
		return &sharing.MPSDaemons{Root: root, Binary: bin, Launcher: []string{launcher}, StartTimeout: 3 * time.Second}
	}
}

// mountedPipe opens the MPS pipe directory the claim's CDI spec mounts, as
// the container runtime's bind mount holds it.
func mountedPipe(t *testing.T, e *testEnv, cdiID string) *os.File {
	t.Helper()
	for _, m := range viewCDI(t, e.cdiRoot, cdiID).Mounts {
		host, container, _ := strings.Cut(m, ":")
		if container == mpsPipeDir {
			f, err := os.Open(host)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = f.Close() })
			return f
		}
	}
	t.Fatalf("%s mounts no MPS pipe directory", cdiID)
	return nil
}

// containerAsks runs an MPS control command as a process of the container
// does, through its mounted pipe directory.
func containerAsks(bin string, mounted *os.File, command string) (string, error) {
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "CUDA_MPS_PIPE_DIRECTORY=/proc/self/fd/3")
	cmd.ExtraFiles = []*os.File{mounted}
	cmd.Stdin = strings.NewReader(command + "\n")
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// TestMPSLimitsSurvivePluginRestart: after the plugin's container ends (its
// daemons with it) and a new plugin starts, a running container's new CUDA
// processes reach the claim's daemon through the pipe directory the
// container has mounted, with the claim's limits; an unprepare whose
// context is already cancelled leaves no MPS process.
func TestMPSLimitsSurvivePluginRestart(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	e := newTestEnv(t, "dgxh200", 1)
	mps := e.realMPS(t)
	p := e.mustPreparer(ctx, withMPS(mps()))
	claim := makeClaim("a").Share("s", "gpu-0-shared", "20Gi", "30", "share-a").Obj()
	if res := p.Prepare(ctx, claim); res.Err != nil {
		t.Fatal(res.Err)
	}
	uuid, _ := e.server.Devices[0].GetUUID()
	mounted := mountedPipe(t, e, "gpu.tessera.dev/claim=a-gpu-0-shared")
	bin := mps().Binary
	queries := map[string]string{
		"get_default_active_thread_percentage":        "30.0",
		"get_default_device_pinned_mem_limit " + uuid: "20480M",
	}
	for q, want := range queries {
		if got, err := containerAsks(bin, mounted, q); err != nil || got != want {
			t.Fatalf("before the restart, the container's %s = %q, %v; want %q", q, got, err, want)
		}
	}

	mpsstandin.EndPlugin(t, mps().Root)
	p = e.mustPreparer(ctx, withMPS(mps()))
	for q, want := range queries {
		if got, err := containerAsks(bin, mounted, q); err != nil || got != want {
			t.Errorf("after the restart, the container's %s = %q, %v; want %q", q, got, err, want)
		}
	}

	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if err := p.Unprepare(cancelled, ref(claim)); err != nil {
		t.Fatal(err)
	}
	if pids := mpsstandin.ProcessesUnder(mps().Root); len(pids) != 0 {
		t.Errorf("MPS processes remain after unprepare: %v", pids)
	}
}

// TestMPSPlantedFilesLeavePluginResponsive: what a container plants in its
// pipe directory neither blocks the plugin (which holds the node's state
// lock while it handles the claim's daemon) nor makes it kill or command
// another claim's daemon; other claims prepare meanwhile.
func TestMPSPlantedFilesLeavePluginResponsive(t *testing.T) {
	for name, plant := range map[string]func(pipe string, victimPID int, victimControl string) error{
		"FIFO": func(pipe string, _ int, _ string) error {
			return replaceFile(filepath.Join(pipe, mpsstandin.PIDFile), func(p string) error { return unix.Mkfifo(p, 0o644) })
		},
		"link to /dev/zero": func(pipe string, _ int, _ string) error {
			return replaceFile(filepath.Join(pipe, mpsstandin.PIDFile), func(p string) error { return os.Symlink("/dev/zero", p) })
		},
		"another claim's daemon PID": func(pipe string, victim int, _ string) error {
			return replaceFile(filepath.Join(pipe, mpsstandin.PIDFile), func(p string) error {
				return os.WriteFile(p, []byte(strconv.Itoa(victim)), 0o644)
			})
		},
		"link to another claim's control socket": func(pipe string, _ int, victimControl string) error {
			return replaceFile(filepath.Join(pipe, "control"), func(p string) error { return os.Symlink(victimControl, p) })
		},
	} {
		t.Run(name, func(t *testing.T) {
			_, ctx := ktesting.NewTestContext(t)
			e := newTestEnv(t, "dgxh200", 1)
			mps := e.realMPS(t)
			p := e.mustPreparer(ctx, withMPS(mps()))
			attacker := makeClaim("a").Share("s", "gpu-0-shared", "20Gi", "30", "share-a").Obj()
			victim := makeClaim("v").Share("s", "gpu-0-shared", "10Gi", "20", "share-v").Obj()
			for _, c := range []*resourceapi.ResourceClaim{attacker, victim} {
				if res := p.Prepare(ctx, c); res.Err != nil {
					t.Fatal(res.Err)
				}
			}
			victimDirs := sharing.DaemonDirs(mps().Root, "v")
			victimPID := readDaemonPID(t, victimDirs.Pipe)
			pipe := sharing.DaemonDirs(mps().Root, "a").Pipe
			if err := plant(pipe, victimPID, filepath.Join(victimDirs.Pipe, "control")); err != nil {
				t.Fatal(err)
			}

			done := make(chan error, 1)
			go func() {
				// The watcher finds the attacker's daemon, then its claim
				// is unprepared.
				_, err := p.SyncMPS(ctx)
				if err == nil {
					err = p.Unprepare(ctx, ref(attacker))
				}
				done <- err
			}()
			other := makeClaim("o").Share("s", "gpu-0-shared", "1Gi", "10", "share-o").Obj()
			prepared := make(chan error, 1)
			go func() { prepared <- p.Prepare(ctx, other).Err }()
			for _, ch := range []chan error{prepared, done} {
				select {
				case err := <-ch:
					if err != nil {
						t.Error(err)
					}
				case <-time.After(60 * time.Second):
					t.Fatal("the plugin did not answer")
				}
			}
			if !mpsstandin.Running(victimPID) {
				t.Fatal("the other claim's daemon was killed")
			}
			got, err := mps().Query(ctx, "v", "get_default_active_thread_percentage")
			if err != nil || got != "20.0" {
				t.Errorf("the other claim's daemon = %q, %v; want its own 20.0", got, err)
			}
		})
	}
}

// replaceFile puts what create makes at path, as a container would.
func replaceFile(path string, create func(string) error) error {
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		return err
	}
	return create(path)
}

func readDaemonPID(t *testing.T, pipe string) int {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(pipe, mpsstandin.PIDFile))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}
