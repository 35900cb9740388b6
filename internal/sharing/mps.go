// Package sharing holds the mechanics by which several containers share one
// GPU: MPS control daemons (one per claim, with the claim's limits as the
// daemon's own defaults, its own pipe directory and its own in-memory
// /dev/shm), the launcher that gives a daemon that /dev/shm, and time
// slicing. It knows nothing of claims' allocation or the checkpoint, so the
// launcher subcommand does not pull in all of prepare.
package sharing

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/klog/v2"
)

// PIDFile is the file in which nvidia-cuda-mps-control records its PID, in
// its pipe directory.
const PIDFile = "nvidia-cuda-mps-control.pid"

// Daemon is the MPS control daemon of one claim. Every claim that shares a
// GPU through MPS gets its own daemon, so that no claim can reach, slow
// down or stop another's: the control pipe is the daemon's only interface,
// and MPS runs one server per UID at a time per daemon.
type Daemon struct {
	// ID names the daemon; the claim's UID.
	ID string
	// GPUUUID is the GPU the daemon serves (its CUDA_VISIBLE_DEVICES).
	GPUUUID string
	// ActiveThreadPercentage, when positive, becomes the daemon's default
	// active thread percentage: clients can only lower it.
	ActiveThreadPercentage int64
	// PinnedMemoryLimitBytes, when positive, becomes the daemon's default
	// pinned device memory limit on the GPU: clients can only lower it.
	PinnedMemoryLimitBytes int64
	// ShmSizeBytes sizes the daemon's private /dev/shm; 0 takes the
	// control's default.
	ShmSizeBytes int64
}

// Dirs are the host directories of one daemon.
type Dirs struct {
	// Pipe holds the daemon's pipes and sockets; clients reach it through
	// CUDA_MPS_PIPE_DIRECTORY.
	Pipe string
	// Log holds the daemon's and its servers' logs.
	Log string
	// Shm is the daemon's /dev/shm, an in-memory file system of its own
	// that its clients mount at /dev/shm.
	Shm string
}

// DaemonDirs returns the directories of the daemon id under root.
func DaemonDirs(root, id string) Dirs {
	dir := filepath.Join(root, id)
	return Dirs{Pipe: filepath.Join(dir, "pipe"), Log: filepath.Join(dir, "log"), Shm: filepath.Join(dir, "shm")}
}

// Commands are the control commands that make the daemon's limits its
// defaults. They are sent before any client can connect (the claim's CDI
// spec does not exist yet), so every server the daemon starts has them,
// whatever the client's environment says.
func (d Daemon) Commands() []string {
	var cmds []string
	if d.ActiveThreadPercentage > 0 {
		cmds = append(cmds, fmt.Sprintf("set_default_active_thread_percentage %d", min(d.ActiveThreadPercentage, 100)))
	}
	if d.PinnedMemoryLimitBytes > 0 {
		// MPS takes whole mebibytes ("M"); rounding down keeps the limit
		// inside the share.
		cmds = append(cmds, fmt.Sprintf("set_default_device_pinned_mem_limit %s %dM", d.GPUUUID, d.PinnedMemoryLimitBytes>>20))
	}
	return cmds
}

// MPSControl starts, lists and stops MPS control daemons. The real one runs
// nvidia-cuda-mps-control; tests use FakeMPS.
type MPSControl interface {
	// Start starts the daemon with its limits; starting a live daemon is
	// not an error. A dead daemon's stale pipes are removed first.
	Start(ctx context.Context, d Daemon) error
	// Stop stops the daemon and removes its directories; stopping a
	// stopped daemon is not an error.
	Stop(ctx context.Context, id string) error
	// List returns every daemon that has directories, and whether it is
	// alive.
	List(ctx context.Context) (map[string]bool, error)
}

// ShmMounter gives a daemon's /dev/shm directory its own in-memory file
// system.
type ShmMounter interface {
	// Mount mounts a file system of sizeBytes on dir, unless one is
	// mounted there already.
	Mount(dir string, sizeBytes int64) error
	// Unmount unmounts dir if something is mounted on it.
	Unmount(dir string) error
}

// DefaultShmSize is a daemon's /dev/shm size when none is given.
const DefaultShmSize = 256 << 20

// MPSDaemons controls real daemons, one directory per daemon under Root.
type MPSDaemons struct {
	// Root holds <id>/pipe, <id>/log and <id>/shm.
	Root string
	// Binary is nvidia-cuda-mps-control, under the driver root.
	Binary string
	// Env is added to this process's environment to run Binary: the
	// driver's library directories, and its binary directories, from which
	// the control daemon starts nvidia-cuda-mps-server (driverroot.Root.Env).
	Env []string
	// StartTimeout bounds how long Start waits for the daemon, and Stop
	// for it to exit.
	StartTimeout time.Duration
	// Launcher, when set, is the command that starts the daemon with its
	// Shm directory as its /dev/shm: it is run as
	// Launcher... --shm <dir> -- <Binary> -d (see ExecWithPrivateShm).
	// Without it the daemon shares the plugin's /dev/shm.
	Launcher []string
	// Shm mounts each daemon's /dev/shm; nil leaves it a plain directory.
	Shm ShmMounter
	// ShmSizeBytes is the /dev/shm size of daemons that give none.
	ShmSizeBytes int64
	// ProcRoot is where the daemons' /proc entries are (default /proc).
	ProcRoot string
}

var _ MPSControl = (*MPSDaemons)(nil)

func (m *MPSDaemons) env(gpuUUID string, dirs Dirs) []string {
	env := append(append(os.Environ(), m.Env...),
		"CUDA_MPS_PIPE_DIRECTORY="+dirs.Pipe,
		"CUDA_MPS_LOG_DIRECTORY="+dirs.Log,
	)
	if gpuUUID != "" {
		env = append(env, "CUDA_VISIBLE_DEVICES="+gpuUUID)
	}
	return env
}

func (m *MPSDaemons) timeout() time.Duration {
	if m.StartTimeout > 0 {
		return m.StartTimeout
	}
	return 10 * time.Second
}

// Start launches "nvidia-cuda-mps-control -d", which forks the daemon and
// returns, waits for the daemon, then sends it the limits as its defaults.
func (m *MPSDaemons) Start(ctx context.Context, d Daemon) error {
	if d.ID == "" {
		return errors.New("start MPS daemon: no daemon ID")
	}
	dirs := DaemonDirs(m.Root, d.ID)
	if m.alive(dirs) {
		return nil
	}
	// A dead daemon leaves its pipes and PID file behind; a new daemon
	// must not be mistaken for it, nor clients connect to its sockets.
	if err := os.RemoveAll(dirs.Pipe); err != nil {
		return fmt.Errorf("start MPS daemon %s: remove stale pipes: %w", d.ID, err)
	}
	for _, dir := range []string{dirs.Pipe, dirs.Log, dirs.Shm} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("start MPS daemon %s: %w", d.ID, err)
		}
	}
	if m.Shm != nil {
		size := d.ShmSizeBytes
		if size <= 0 {
			size = m.ShmSizeBytes
		}
		if size <= 0 {
			size = DefaultShmSize
		}
		if err := m.Shm.Mount(dirs.Shm, size); err != nil {
			return fmt.Errorf("start MPS daemon %s: mount its /dev/shm: %w", d.ID, err)
		}
	}
	cmd := exec.CommandContext(ctx, m.Binary, "-d")
	if len(m.Launcher) > 0 {
		args := append(append([]string{}, m.Launcher[1:]...), "--shm", dirs.Shm, "--", m.Binary, "-d")
		cmd = exec.CommandContext(ctx, m.Launcher[0], args...)
	}
	cmd.Env = m.env(d.GPUUUID, dirs)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("start MPS daemon %s for GPU %s: %w: %s", d.ID, d.GPUUUID, err, strings.TrimSpace(string(out)))
	}
	err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, m.timeout(), true, func(context.Context) (bool, error) {
		return m.alive(dirs), nil
	})
	if err != nil {
		return fmt.Errorf("start MPS daemon %s for GPU %s: no live daemon with a control pipe in %s: %w", d.ID, d.GPUUUID, dirs.Pipe, err)
	}
	for _, c := range d.Commands() {
		if err := m.send(ctx, d.GPUUUID, dirs, c); err != nil {
			return fmt.Errorf("start MPS daemon %s: %w", d.ID, err)
		}
	}
	klog.FromContext(ctx).V(2).Info("Started MPS daemon", "daemon", d.ID, "gpu", d.GPUUUID, "commands", d.Commands())
	return nil
}

// send runs one control command through the daemon's control pipe.
func (m *MPSDaemons) send(ctx context.Context, gpuUUID string, dirs Dirs, command string) error {
	// A wedged daemon must not hang a prepare or an unprepare.
	ctx, cancel := context.WithTimeout(ctx, m.timeout())
	defer cancel()
	cmd := exec.CommandContext(ctx, m.Binary)
	cmd.Env = m.env(gpuUUID, dirs)
	cmd.Stdin = strings.NewReader(command + "\n")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("MPS control %q: %w: %s", command, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Stop sends "quit" to a live daemon, waits for it to exit (killing it when
// it does not), unmounts its /dev/shm and removes its directories.
func (m *MPSDaemons) Stop(ctx context.Context, id string) error {
	dirs := DaemonDirs(m.Root, id)
	if pid, ok := m.pid(dirs); ok {
		if err := m.send(ctx, "", dirs, "quit"); err != nil {
			klog.FromContext(ctx).Info("MPS daemon did not take quit; killing it", "daemon", id, "err", err)
		}
		err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, m.timeout(), true, func(context.Context) (bool, error) {
			return !m.processAlive(pid), nil
		})
		if err != nil {
			if kerr := unix.Kill(pid, unix.SIGKILL); kerr != nil && !errors.Is(kerr, unix.ESRCH) {
				return fmt.Errorf("stop MPS daemon %s: kill %d: %w", id, pid, kerr)
			}
		}
	}
	if m.Shm != nil {
		if err := m.Shm.Unmount(dirs.Shm); err != nil {
			return fmt.Errorf("stop MPS daemon %s: unmount its /dev/shm: %w", id, err)
		}
	}
	if err := os.RemoveAll(filepath.Dir(dirs.Pipe)); err != nil {
		return fmt.Errorf("stop MPS daemon %s: %w", id, err)
	}
	return nil
}

// List returns every daemon directory under Root and whether its daemon
// is alive.
func (m *MPSDaemons) List(context.Context) (map[string]bool, error) {
	entries, err := os.ReadDir(m.Root)
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]bool{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list MPS daemons: %w", err)
	}
	out := map[string]bool{}
	for _, e := range entries {
		if e.IsDir() {
			out[e.Name()] = m.alive(DaemonDirs(m.Root, e.Name()))
		}
	}
	return out, nil
}

// alive reports whether the daemon's recorded process runs and its control
// pipe exists. A pipe alone says nothing: a crashed daemon leaves it.
func (m *MPSDaemons) alive(dirs Dirs) bool {
	if _, err := os.Stat(filepath.Join(dirs.Pipe, "control")); err != nil {
		return false
	}
	_, ok := m.pid(dirs)
	return ok
}

// pid returns the daemon's PID when that process runs and is the daemon
// (PIDs are reused: the process's name must be the binary's).
func (m *MPSDaemons) pid(dirs Dirs) (int, bool) {
	data, err := os.ReadFile(filepath.Join(dirs.Pipe, PIDFile))
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 0 {
		return 0, false
	}
	return pid, m.processAlive(pid)
}

func (m *MPSDaemons) processAlive(pid int) bool {
	proc := m.ProcRoot
	if proc == "" {
		proc = "/proc"
	}
	// A zombie has exited: its parent just has not reaped it yet.
	stat, err := os.ReadFile(filepath.Join(proc, strconv.Itoa(pid), "stat"))
	i := strings.LastIndex(string(stat), ") ")
	if err != nil || i < 0 || strings.HasPrefix(string(stat[i+2:]), "Z") {
		return false
	}
	comm, err := os.ReadFile(filepath.Join(proc, strconv.Itoa(pid), "comm"))
	if err != nil {
		return false
	}
	// The kernel keeps the first 15 bytes of the executable's name.
	name := filepath.Base(m.Binary)
	if len(name) > 15 {
		name = name[:15]
	}
	return strings.TrimSpace(string(comm)) == name
}
