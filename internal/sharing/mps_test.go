package sharing

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2/ktesting"

	configapi "github.com/tessera-gpu/tessera/api/config/v1alpha1"
	"github.com/tessera-gpu/tessera/internal/sharing/mpsstandin"
)

// TestMPSDaemonLaunchedWithPrivateShm: the daemon is started through the
// launcher, with its own /dev/shm, which the mounter mounts with the
// daemon's size before and unmounts after.
func TestMPSDaemonLaunchedWithPrivateShm(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	m := standIn(t)
	launcher := filepath.Join(t.TempDir(), "launcher")
	// It records its arguments and runs the stand-in launcher without
	// --shm: the private mount namespace is TestMPSLaunchGivesPrivateShm's.
	writeExecutable(t, launcher, `#!/bin/sh
echo "$@" >> "$(dirname "$0")/launched"
shift 3
exec "`+m.Launcher[0]+`" "$@"
`)
	shm := &recordingShm{}
	m.Launcher, m.Shm, m.ShmSizeBytes = []string{launcher, "mps-launch"}, shm, 64<<20
	if err := m.Start(ctx, Daemon{ID: "claim-a", GPUUUID: "GPU-1"}); err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ctx, Daemon{ID: "claim-b", GPUUUID: "GPU-1", ShmSizeBytes: 1 << 30}); err != nil {
		t.Fatal(err)
	}
	da, db := DaemonDirs(m.Root, "claim-a"), DaemonDirs(m.Root, "claim-b")
	got, err := os.ReadFile(filepath.Join(filepath.Dir(launcher), "launched"))
	if err != nil {
		t.Fatal(err)
	}
	want := "mps-launch --shm " + da.Shm + " -- " + m.Binary + " -f\n" + "mps-launch --shm " + db.Shm + " -- " + m.Binary + " -f\n"
	if diff := cmp.Diff(want, string(got)); diff != "" {
		t.Errorf("launcher arguments (-want +got):\n%s", diff)
	}
	for _, id := range []string{"claim-a", "claim-b"} {
		if err := m.Stop(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	wantCalls := []string{
		"mount " + da.Shm + " " + strconv.Itoa(64<<20),
		"mount " + db.Shm + " " + strconv.Itoa(1<<30),
		"unmount " + da.Shm,
		"unmount " + db.Shm,
	}
	if diff := cmp.Diff(wantCalls, shm.calls); diff != "" {
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

// TestMPSDaemonRunsWithDriverEnv: the control daemon runs with the driver's
// library directory on LD_LIBRARY_PATH and its binary directory first on
// PATH, from which it starts nvidia-cuda-mps-server.
func TestMPSDaemonRunsWithDriverEnv(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	m := standIn(t)
	want := []string{"LD_LIBRARY_PATH=/driver-root/usr/lib64", "PATH=/driver-root/usr/bin:" + os.Getenv("PATH")}
	m.Env = want
	if err := m.Start(ctx, Daemon{ID: "claim-a", GPUUUID: "GPU-1", ActiveThreadPercentage: 30}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Stop(ctx, "claim-a") })
	pid, err := os.ReadFile(filepath.Join(DaemonDirs(m.Root, "claim-a").Pipe, mpsstandin.PIDFile))
	if err != nil {
		t.Fatal(err)
	}
	environ, err := os.ReadFile(filepath.Join("/proc", strings.TrimSpace(string(pid)), "environ"))
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Split(string(environ), "\x00")
	for _, w := range want {
		if !slices.Contains(got, w) {
			t.Errorf("the control daemon runs without %s", w)
		}
	}
}
