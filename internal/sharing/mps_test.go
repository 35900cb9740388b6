package sharing

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/klog/v2/ktesting"

	configapi "github.com/tessera-gpu/tessera/api/config/v1alpha1"
)

// standInMPSControl behaves like nvidia-cuda-mps-control as far as the
// plugin can tell, and records every call in "calls" beside itself: "-d"
// starts a daemon process (named like the binary, as the real one is) that
// writes its PID file and control pipe; a command on stdin is recorded, and
// "quit" ends the daemon.
const standInMPSControl = `#!/bin/sh
calls="$(dirname "$0")/calls"
id="$(basename "$(dirname "$CUDA_MPS_PIPE_DIRECTORY")")"
if [ "$1" = "-d" ]; then
	[ -n "$CUDA_VISIBLE_DEVICES" ] || { echo "no CUDA_VISIBLE_DEVICES" >&2; exit 1; }
	echo "$id: start gpu=$CUDA_VISIBLE_DEVICES pipe=$CUDA_MPS_PIPE_DIRECTORY log=$CUDA_MPS_LOG_DIRECTORY" >> "$calls"
	mkfifo "$CUDA_MPS_PIPE_DIRECTORY/control" || exit 1
	( i=0; while [ -p "$CUDA_MPS_PIPE_DIRECTORY/control" ] && [ $i -lt 3000 ]; do sleep 0.05; i=$((i+1)); done ) </dev/null >/dev/null 2>&1 &
	echo $! > "$CUDA_MPS_PIPE_DIRECTORY/nvidia-cuda-mps-control.pid"
	exit 0
fi
read -r cmd
echo "$id: $cmd" >> "$calls"
[ "$cmd" = quit ] && rm -f "$CUDA_MPS_PIPE_DIRECTORY/control"
exit 0
`

func writeExecutable(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o755); err != nil {
		t.Fatal(err)
	}
}

// standIn returns MPSDaemons on the stand-in binary and a function that
// returns the calls recorded so far.
func standIn(t *testing.T) (*MPSDaemons, func() []string) {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "nvidia-cuda-mps-control")
	writeExecutable(t, bin, standInMPSControl)
	m := &MPSDaemons{Root: t.TempDir(), Binary: bin}
	t.Cleanup(func() {
		// Leave no stand-in daemon behind a failed test.
		daemons, _ := m.List(t.Context())
		for id := range daemons {
			if pid, ok := m.pid(DaemonDirs(m.Root, id)); ok {
				_ = unix.Kill(pid, unix.SIGKILL)
			}
		}
	})
	return m, func() []string {
		data, err := os.ReadFile(filepath.Join(dir, "calls"))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		return strings.Split(strings.TrimSpace(string(data)), "\n")
	}
}

// TestMPSDaemonPerClaimWithServerSideLimits: two claims on one GPU get two
// daemons, each with its own pipe and log directories and the claim's
// limits set as the daemon's defaults before anything can connect, so that
// a client that unsets its environment still gets them; stopping one
// leaves the other alone.
func TestMPSDaemonPerClaimWithServerSideLimits(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	m, calls := standIn(t)
	a := Daemon{ID: "claim-a", GPUUUID: "GPU-1", ActiveThreadPercentage: 30, PinnedMemoryLimitBytes: 20 << 30}
	b := Daemon{ID: "claim-b", GPUUUID: "GPU-1", ActiveThreadPercentage: 70, PinnedMemoryLimitBytes: 10<<30 + 100}
	for _, d := range []Daemon{a, b, a} { // starting a live daemon again does nothing
		if err := m.Start(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	da, db := DaemonDirs(m.Root, "claim-a"), DaemonDirs(m.Root, "claim-b")
	want := []string{
		"claim-a: start gpu=GPU-1 pipe=" + da.Pipe + " log=" + da.Log,
		"claim-a: set_default_active_thread_percentage 30",
		"claim-a: set_default_device_pinned_mem_limit GPU-1 20480M",
		"claim-b: start gpu=GPU-1 pipe=" + db.Pipe + " log=" + db.Log,
		"claim-b: set_default_active_thread_percentage 70",
		"claim-b: set_default_device_pinned_mem_limit GPU-1 10240M",
	}
	if diff := cmp.Diff(want, calls()); diff != "" {
		t.Errorf("MPS control calls (-want +got):\n%s", diff)
	}
	if got, _ := m.List(ctx); !cmp.Equal(map[string]bool{"claim-a": true, "claim-b": true}, got) {
		t.Errorf("List = %v, want both alive", got)
	}

	for range 2 { // stopping a stopped daemon is not an error
		if err := m.Stop(ctx, "claim-a"); err != nil {
			t.Fatal(err)
		}
	}
	if got := calls(); got[len(got)-1] != "claim-a: quit" || strings.Contains(strings.Join(got, "\n"), "claim-b: quit") {
		t.Errorf("stopping claim-a sent %v", got[len(want):])
	}
	if _, err := os.Stat(filepath.Dir(da.Pipe)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("claim-a's directories left after stop: %v", err)
	}
	if got, _ := m.List(ctx); !cmp.Equal(map[string]bool{"claim-b": true}, got) {
		t.Errorf("List after stopping claim-a = %v, want only claim-b alive", got)
	}
}

// TestMPSDaemonLivenessAndRestart: a daemon whose process died is seen as
// dead although its control pipe remains; starting it again removes the
// stale pipes, starts a new daemon and sets its limits again.
func TestMPSDaemonLivenessAndRestart(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	m, calls := standIn(t)
	d := Daemon{ID: "claim-a", GPUUUID: "GPU-1", ActiveThreadPercentage: 50}
	if err := m.Start(ctx, d); err != nil {
		t.Fatal(err)
	}
	dirs := DaemonDirs(m.Root, d.ID)
	pid, ok := m.pid(dirs)
	if !ok {
		t.Fatal("no live daemon after Start")
	}
	if err := unix.Kill(pid, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 10*time.Second, true, func(ctx2 context.Context) (bool, error) {
		l, err := m.List(ctx2)
		return !l[d.ID], err
	})
	if err != nil {
		t.Fatalf("killed daemon still listed alive: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dirs.Pipe, "control")); err != nil {
		t.Fatalf("the crash should have left the control pipe: %v", err)
	}
	if err := m.Start(ctx, d); err != nil {
		t.Fatal(err)
	}
	newPID, ok := m.pid(dirs)
	if !ok || newPID == pid {
		t.Errorf("restart: pid %d (alive %v), was %d", newPID, ok, pid)
	}
	got := calls()
	want := []string{"claim-a: start", "claim-a: set_default_active_thread_percentage 50", "claim-a: start", "claim-a: set_default_active_thread_percentage 50"}
	for i := range got {
		got[i], _, _ = strings.Cut(got[i], " gpu=")
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("MPS control calls (-want +got):\n%s", diff)
	}
	if err := m.Stop(ctx, d.ID); err != nil {
		t.Fatal(err)
	}
}

// TestMPSDaemonLaunchedWithPrivateShm: with a launcher, the daemon is
// started through it with its own /dev/shm, which the mounter mounts with
// the daemon's size before and unmounts after.
func TestMPSDaemonLaunchedWithPrivateShm(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	m, _ := standIn(t)
	launcher := filepath.Join(t.TempDir(), "launcher")
	// The stand-in launcher records its arguments and runs the command
	// after "--", as "dra-kubelet-plugin mps-launch" does.
	writeExecutable(t, launcher, `#!/bin/sh
echo "$@" > "$(dirname "$0")/launched"
while [ "$1" != "--" ]; do shift; done
shift
exec "$@"
`)
	shm := &recordingShm{}
	m.Launcher, m.Shm, m.ShmSizeBytes = []string{launcher, "mps-launch"}, shm, 64<<20
	if err := m.Start(ctx, Daemon{ID: "claim-a", GPUUUID: "GPU-1"}); err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ctx, Daemon{ID: "claim-b", GPUUUID: "GPU-1", ShmSizeBytes: 1 << 30}); err != nil {
		t.Fatal(err)
	}
	dirs := DaemonDirs(m.Root, "claim-b")
	got, err := os.ReadFile(filepath.Join(filepath.Dir(launcher), "launched"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "mps-launch --shm " + dirs.Shm + " -- " + m.Binary + " -d"; strings.TrimSpace(string(got)) != want {
		t.Errorf("launcher ran with %q, want %q", got, want)
	}
	for _, id := range []string{"claim-a", "claim-b"} {
		if err := m.Stop(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{
		"mount " + DaemonDirs(m.Root, "claim-a").Shm + " " + strconv.Itoa(64<<20),
		"mount " + dirs.Shm + " " + strconv.Itoa(1<<30),
		"unmount " + DaemonDirs(m.Root, "claim-a").Shm,
		"unmount " + dirs.Shm,
	}
	if diff := cmp.Diff(want, shm.calls); diff != "" {
		t.Errorf("shm mounts (-want +got):\n%s", diff)
	}
}

type recordingShm struct{ calls []string }

func (r *recordingShm) Mount(dir string, size int64) error {
	r.calls = append(r.calls, "mount "+dir+" "+strconv.FormatInt(size, 10))
	return nil
}

func (r *recordingShm) Unmount(dir string) error {
	r.calls = append(r.calls, "unmount "+dir)
	return nil
}

// TestTmpfsShm: a daemon's /dev/shm is an in-memory file system of the
// requested size, mounted once, and gone after Unmount. It needs the right
// to mount (root, as the plugin runs).
func TestTmpfsShm(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "shm")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := (Tmpfs{}).Mount(dir, 8<<20); err != nil {
		if errors.Is(err, unix.EPERM) {
			t.Skipf("no right to mount here: %v", err)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	if err := (Tmpfs{}).Mount(dir, 8<<20); err != nil { // already mounted: nothing to do
		t.Fatal(err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	if st.Type != unix.TMPFS_MAGIC || st.Blocks*uint64(st.Bsize) != 8<<20 {
		t.Errorf("shm is type %#x of %d bytes, want tmpfs of %d", st.Type, st.Blocks*uint64(st.Bsize), 8<<20)
	}
	for range 2 {
		if err := (Tmpfs{}).Unmount(dir); err != nil {
			t.Fatal(err)
		}
	}
	if mounted, err := isMountPoint(dir); err != nil || mounted {
		t.Errorf("after Unmount: mounted %v, %v", mounted, err)
	}
}

func TestNvidiaSMITimeSlice(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "nvidia-smi")
	writeExecutable(t, bin, "#!/bin/sh\necho \"$@\" >> "+filepath.Join(dir, "calls")+"\n")
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

// A simulated node's fake daemons keep the directories a claim's CDI spec
// mounts: a real container runtime refuses a mount whose source is missing.
func TestFakeMPSKeepsDaemonDirs(t *testing.T) {
	root := t.TempDir()
	f := NewFakeMPS()
	f.Root = root
	if err := f.Start(t.Context(), Daemon{ID: "claim-1", GPUUUID: "GPU-0"}); err != nil {
		t.Fatal(err)
	}
	dirs := DaemonDirs(root, "claim-1")
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

// TestMPSDaemonRunsWithDriverEnv: the control daemon and every control
// command run with the driver's library directory on LD_LIBRARY_PATH and
// its binary directory first on PATH, from which the daemon starts
// nvidia-cuda-mps-server.
func TestMPSDaemonRunsWithDriverEnv(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "nvidia-cuda-mps-control")
	record := `calls="$(dirname "$0")/calls"` + "\n" + `echo "$LD_LIBRARY_PATH ${PATH%%:*}" >> "$(dirname "$0")/env"` + "\n"
	writeExecutable(t, bin, strings.Replace(standInMPSControl, `calls="$(dirname "$0")/calls"`+"\n", record, 1))
	m := &MPSDaemons{Root: t.TempDir(), Binary: bin, Env: []string{"LD_LIBRARY_PATH=/driver-root/usr/lib64", "PATH=/driver-root/usr/bin:" + os.Getenv("PATH")}}
	if err := m.Start(ctx, Daemon{ID: "claim-a", GPUUUID: "GPU-1", ActiveThreadPercentage: 30}); err != nil {
		t.Fatal(err)
	}
	if err := m.Stop(ctx, "claim-a"); err != nil {
		t.Fatal(err)
	}
	env, err := os.ReadFile(filepath.Join(dir, "env"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(env)), "\n")
	if len(lines) != 3 { // start, the thread percentage, quit
		t.Fatalf("control ran %d times, want 3: %q", len(lines), env)
	}
	for _, l := range lines {
		if l != "/driver-root/usr/lib64 /driver-root/usr/bin" {
			t.Errorf("control ran with LD_LIBRARY_PATH and first PATH entry %q, want the driver's", l)
		}
	}
}
