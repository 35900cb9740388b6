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
	"sync"
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/klog/v2"
)

// MPSDaemons controls real daemons, one directory per daemon under Root.
//
// A daemon's pipe directory (and its /dev/shm) is mounted read-write into
// its claim's containers, so everything in it is the tenant's: the plugin
// never reads a file there, never follows a link there, never opens a FIFO
// there and never takes a PID from there. What the plugin trusts lives in
// the daemon's own directory, <Root>/<id>, which no container mounts: the
// liveness lock (see lockFile) and the private copies of the control
// socket it talks through (see linkControl).
type MPSDaemons struct {
	// Root holds <id>/pipe, <id>/log and <id>/shm.
	Root string
	// Binary is nvidia-cuda-mps-control, under the driver root.
	Binary string
	// Env is added to this process's environment to run Binary: the
	// driver's library directories, and its binary directories, from which
	// the control daemon starts nvidia-cuda-mps-server (driverroot.Root.Env).
	Env []string
	// StartTimeout bounds how long Start waits for the daemon, each
	// control command, and each phase of Stop.
	StartTimeout time.Duration
	// Launcher is the command that runs a daemon and holds its liveness
	// lock for as long as the daemon runs: it is run as
	// Launcher... [--shm <dir>] -- <Binary> -f, with the lock on
	// descriptor 3 (see Launch; the plugin's "mps-launch" subcommand).
	// Required.
	Launcher []string
	// Shm mounts each daemon's /dev/shm, which the launcher then gives the
	// daemon as its /dev/shm; nil leaves the daemon the launcher's.
	Shm ShmMounter
	// ShmSizeBytes is the /dev/shm size of daemons that give none.
	ShmSizeBytes int64
	// ProcRoot is the /proc of the plugin's PID namespace (default /proc),
	// searched for the processes of a daemon that must be gone.
	ProcRoot string

	mu sync.Mutex
	// launched holds the launchers this value started that have not exited.
	launched map[string]*launched
}

var _ MPSControl = (*MPSDaemons)(nil)

// launched is a launcher this process started; its os.Process signals the
// very process started (Go uses a pidfd), whatever PIDs are reused.
type launched struct {
	proc *os.Process
	done chan struct{}
}

func (m *MPSDaemons) env(gpuUUID, pipe, log string) []string {
	env := append(append(os.Environ(), m.Env...),
		"CUDA_MPS_PIPE_DIRECTORY="+pipe,
		"CUDA_MPS_LOG_DIRECTORY="+log,
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

// validID refuses IDs that would leave Root or look like its own entries.
func validID(id string) error {
	if id == "" || strings.HasPrefix(id, ".") || strings.ContainsRune(id, '/') {
		return fmt.Errorf("invalid MPS daemon ID %q", id)
	}
	return nil
}

// Start starts the daemon unless a live one holds its lock, whoever
// started it (another plugin instance of a rolling update included), then
// waits for its control socket and sends it the limits as its defaults.
//
// A daemon that died keeps its pipe directory: running containers of the
// claim have that very directory (inode) bind-mounted, and their new CUDA
// processes reach the new daemon only through it. Only the dead daemon's
// files in it are removed.
func (m *MPSDaemons) Start(ctx context.Context, d Daemon) error {
	if err := validID(d.ID); err != nil {
		return fmt.Errorf("start MPS daemon: %w", err)
	}
	if len(m.Launcher) == 0 {
		return fmt.Errorf("start MPS daemon %s: no launcher", d.ID)
	}
	dirs := DaemonDirs(m.Root, d.ID)
	if err := os.MkdirAll(filepath.Dir(dirs.Pipe), 0o755); err != nil {
		return fmt.Errorf("start MPS daemon %s: %w", d.ID, err)
	}
	for _, dir := range []string{dirs.Pipe, dirs.Log, dirs.Shm} {
		if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("start MPS daemon %s: %w", d.ID, err)
		}
	}
	lock, alive, err := m.acquire(ctx, dirs)
	if err != nil || alive {
		return err
	}
	// The launcher holds the lock from here on; this copy goes.
	defer func() { _ = lock.Close() }()
	if err := clearStale(dirs.Pipe); err != nil {
		return fmt.Errorf("start MPS daemon %s: %w", d.ID, err)
	}
	args := append([]string{}, m.Launcher[1:]...)
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
		args = append(args, "--shm", dirs.Shm)
	}
	// Not bound to ctx: the daemon outlives the request that started it.
	cmd := exec.Command(m.Launcher[0], append(args, "--", m.Binary, "-f")...)
	cmd.Env = m.env(d.GPUUUID, dirs.Pipe, dirs.Log)
	cmd.ExtraFiles = []*os.File{lock}
	// Its own process group: the launcher ends the group, servers the
	// daemon left behind included, when the daemon exits.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start MPS daemon %s for GPU %s: %w", d.ID, d.GPUUUID, err)
	}
	l := &launched{proc: cmd.Process, done: make(chan struct{})}
	m.mu.Lock()
	if m.launched == nil {
		m.launched = map[string]*launched{}
	}
	m.launched[d.ID] = l
	m.mu.Unlock()
	go func() {
		_ = cmd.Wait()
		close(l.done)
		m.mu.Lock()
		if m.launched[d.ID] == l {
			delete(m.launched, d.ID)
		}
		m.mu.Unlock()
	}()
	if err := m.waitReady(ctx, dirs, l); err != nil {
		m.terminate(ctx, d.ID)
		return fmt.Errorf("start MPS daemon %s for GPU %s: %w", d.ID, d.GPUUUID, err)
	}
	for _, c := range d.Commands() {
		if _, err := m.send(ctx, d.GPUUUID, dirs, c); err != nil {
			m.terminate(ctx, d.ID)
			return fmt.Errorf("start MPS daemon %s: %w", d.ID, err)
		}
	}
	klog.FromContext(ctx).V(2).Info("Started MPS daemon", "daemon", d.ID, "gpu", d.GPUUUID, "commands", d.Commands())
	return nil
}

// waitReady waits until the daemon answers on its control socket.
func (m *MPSDaemons) waitReady(ctx context.Context, dirs Dirs, l *launched) error {
	var last error
	err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, m.timeout(), true, func(context.Context) (bool, error) {
		select {
		case <-l.done:
			return false, errors.New("the daemon exited")
		default:
		}
		last = probeControl(dirs)
		return last == nil, nil
	})
	if err != nil {
		return fmt.Errorf("no control socket answering in %s: %w", dirs.Pipe, errors.Join(err, last))
	}
	return nil
}

// Query sends one control command (e.g. get_default_active_thread_percentage)
// to the daemon and returns its answer.
func (m *MPSDaemons) Query(ctx context.Context, id, command string) (string, error) {
	if err := validID(id); err != nil {
		return "", err
	}
	return m.send(ctx, "", DaemonDirs(m.Root, id), command)
}

// send runs one control command through the daemon's control socket, as
// the daemon's own client (nvidia-cuda-mps-control without arguments)
// does, but through a private link to the socket (see linkControl), so
// that a link a container put in the pipe directory cannot send the
// command to another claim's daemon.
func (m *MPSDaemons) send(ctx context.Context, gpuUUID string, dirs Dirs, command string) (string, error) {
	// A wedged daemon must not hang a prepare or an unprepare.
	ctx, cancel := context.WithTimeout(ctx, m.timeout())
	defer cancel()
	private, cleanup, err := linkControl(dirs)
	if err != nil {
		return "", fmt.Errorf("MPS control %q: %w", command, err)
	}
	defer cleanup()
	cmd := exec.CommandContext(ctx, m.Binary)
	cmd.Env = m.env(gpuUUID, private, dirs.Log)
	cmd.Stdin = strings.NewReader(command + "\n")
	// A child that keeps the output open must not hold the caller past
	// the timeout either.
	cmd.WaitDelay = time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("MPS control %q: %w: %s", command, err, strings.TrimSpace(string(out)))
	}
	return strings.TrimSpace(string(out)), nil
}

// Stop sends "quit" to a live daemon and waits for it to exit; a daemon
// this process launched that does not quit is ended with its launcher's
// process group. Then every process of this PID namespace that runs for
// the daemon (its servers) is killed, its /dev/shm unmounted and its
// directories removed. Stopping a stopped daemon is not an error.
//
// The caller's context may already be cancelled (the kubelet gave up on
// an unprepare): stopping still runs to its end, bounded by its own
// timeouts, because a half-stopped daemon leaks its server and the GPU
// memory it holds.
func (m *MPSDaemons) Stop(ctx context.Context, id string) error {
	if err := validID(id); err != nil {
		return fmt.Errorf("stop MPS daemon: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 4*m.timeout())
	defer cancel()
	logger := klog.FromContext(ctx)
	dirs := DaemonDirs(m.Root, id)
	if m.alive(dirs) {
		if _, err := m.send(ctx, "", dirs, "quit"); err != nil {
			logger.Info("MPS daemon did not take quit", "daemon", id, "err", err)
		}
		if !m.waitDead(ctx, dirs) {
			m.terminate(ctx, id)
		}
		if !m.waitDead(ctx, dirs) {
			// Its launcher runs in another PID namespace (another plugin
			// instance), which this one cannot signal: the daemon stays
			// until it quits or that instance's container ends.
			return fmt.Errorf("stop MPS daemon %s: it did not quit, and it was not started by this plugin instance", id)
		}
	}
	if err := m.killLeftovers(ctx, dirs); err != nil {
		return fmt.Errorf("stop MPS daemon %s: %w", id, err)
	}
	if m.Shm != nil {
		if err := m.Shm.Unmount(dirs.Shm); err != nil {
			return fmt.Errorf("stop MPS daemon %s: unmount its /dev/shm: %w", id, err)
		}
	}
	// A container may have left any number of files in the pipe
	// directory, and Stop runs under the node's state lock: the daemon's
	// directory is only renamed here, and List deletes it.
	trash := filepath.Join(m.Root, trashPrefix+id+"-"+strconv.FormatInt(time.Now().UnixNano(), 36))
	if err := os.Rename(filepath.Dir(dirs.Pipe), trash); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("stop MPS daemon %s: %w", id, err)
	}
	return nil
}

// trashPrefix marks the directories of stopped daemons that List deletes;
// no claim UID starts with a dot.
const trashPrefix = ".stopped-"

// waitDead waits, bounded, for the daemon's lock to be released.
func (m *MPSDaemons) waitDead(ctx context.Context, dirs Dirs) bool {
	err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, m.timeout(), true, func(context.Context) (bool, error) {
		return !m.alive(dirs), nil
	})
	return err == nil
}

// terminate ends a daemon this process launched: SIGTERM makes the
// launcher kill its process group (daemon and servers); SIGKILL, when it
// does not exit, kills the launcher, and the daemon with it (its parent
// death signal).
func (m *MPSDaemons) terminate(ctx context.Context, id string) {
	m.mu.Lock()
	l := m.launched[id]
	m.mu.Unlock()
	if l == nil {
		return
	}
	for _, sig := range []os.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		if err := l.proc.Signal(sig); err != nil {
			return // it has exited
		}
		select {
		case <-l.done:
			return
		case <-time.After(m.timeout()):
		case <-ctx.Done():
			return
		}
	}
}

// List returns every daemon directory under Root and whether its daemon
// is alive (its lock is held), whichever plugin instance started it. It
// also deletes the directories of stopped daemons: it runs outside the
// node's state lock (see Stop).
func (m *MPSDaemons) List(ctx context.Context) (map[string]bool, error) {
	entries, err := os.ReadDir(m.Root)
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]bool{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list MPS daemons: %w", err)
	}
	out := map[string]bool{}
	for _, e := range entries {
		switch {
		case strings.HasPrefix(e.Name(), trashPrefix):
			// RemoveAll neither follows links nor opens anything but
			// directories (O_NOFOLLOW), so what a container left there
			// cannot make it delete elsewhere or block.
			if err := os.RemoveAll(filepath.Join(m.Root, e.Name())); err != nil {
				klog.FromContext(ctx).Error(err, "Deleting the directory of a stopped MPS daemon failed")
			}
		case e.IsDir():
			out[e.Name()] = m.alive(DaemonDirs(m.Root, e.Name()))
		}
	}
	return out, nil
}
