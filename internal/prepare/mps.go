package prepare

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
)

// MPSDaemon is the MPS control daemon of one shared GPU.
type MPSDaemon struct {
	GPUUUID string
	// PipeDir is the host directory of the daemon's pipes, which clients
	// reach through CUDA_MPS_PIPE_DIRECTORY.
	PipeDir string
	// LogDir is the host directory of the daemon's logs.
	LogDir string
	// ShmDir is the host directory the daemon uses as /dev/shm, which the
	// claims' containers mount at /dev/shm.
	ShmDir string
}

// MPSControl starts, lists and stops MPS control daemons. The real one runs
// nvidia-cuda-mps-control; tests use FakeMPS. Daemons outlive the plugin
// process, so that a plugin restart does not cut running workloads off.
type MPSControl interface {
	// Start starts the GPU's daemon; starting a running daemon is not an
	// error.
	Start(ctx context.Context, d MPSDaemon) error
	// Stop stops the GPU's daemon; stopping a stopped daemon is not an
	// error.
	Stop(ctx context.Context, gpuUUID string) error
	// Running lists the GPU UUIDs that have a running daemon, sorted.
	Running(ctx context.Context) ([]string, error)
}

// MPSDaemons controls real daemons, one directory per GPU under Root.
type MPSDaemons struct {
	// Root holds <gpu-uuid>/pipe and <gpu-uuid>/log.
	Root string
	// Binary is nvidia-cuda-mps-control, under the driver root.
	Binary string
	// StartTimeout bounds how long Start waits for the daemon's pipe.
	StartTimeout time.Duration
	// Launcher, when set, is the command that starts the daemon with
	// ShmDir as its /dev/shm: it is run as
	// Launcher... --shm <ShmDir> -- <Binary> -d (see ExecWithPrivateShm).
	// Without it the daemon shares the plugin's /dev/shm.
	Launcher []string
}

var _ MPSControl = (*MPSDaemons)(nil)

func (m *MPSDaemons) env(d MPSDaemon) []string {
	return append(os.Environ(),
		"CUDA_VISIBLE_DEVICES="+d.GPUUUID,
		"CUDA_MPS_PIPE_DIRECTORY="+d.PipeDir,
		"CUDA_MPS_LOG_DIRECTORY="+d.LogDir,
	)
}

// Start runs "nvidia-cuda-mps-control -d", which forks the daemon and
// returns, then waits for the daemon's control pipe.
func (m *MPSDaemons) Start(ctx context.Context, d MPSDaemon) error {
	control := filepath.Join(d.PipeDir, "control")
	if _, err := os.Stat(control); err == nil {
		return nil
	}
	for _, dir := range []string{d.PipeDir, d.LogDir, d.ShmDir} {
		if dir == "" {
			continue
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("start MPS daemon for GPU %s: %w", d.GPUUUID, err)
		}
	}
	cmd := exec.CommandContext(ctx, m.Binary, "-d")
	if len(m.Launcher) > 0 && d.ShmDir != "" {
		args := append(append([]string{}, m.Launcher[1:]...), "--shm", d.ShmDir, "--", m.Binary, "-d")
		cmd = exec.CommandContext(ctx, m.Launcher[0], args...)
	}
	cmd.Env = m.env(d)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("start MPS daemon for GPU %s: %w: %s", d.GPUUUID, err, strings.TrimSpace(string(out)))
	}
	timeout := m.StartTimeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, timeout, true, func(context.Context) (bool, error) {
		_, err := os.Stat(control)
		return err == nil, nil
	})
	if err != nil {
		return fmt.Errorf("start MPS daemon for GPU %s: no control pipe %s: %w", d.GPUUUID, control, err)
	}
	return nil
}

// Stop sends "quit" to the daemon and removes its directories.
func (m *MPSDaemons) Stop(ctx context.Context, gpuUUID string) error {
	dir := filepath.Join(m.Root, gpuUUID)
	d := MPSDaemon{GPUUUID: gpuUUID, PipeDir: filepath.Join(dir, "pipe"), LogDir: filepath.Join(dir, "log")}
	if _, err := os.Stat(filepath.Join(d.PipeDir, "control")); err == nil {
		cmd := exec.CommandContext(ctx, m.Binary)
		cmd.Env = m.env(d)
		cmd.Stdin = strings.NewReader("quit\n")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("stop MPS daemon for GPU %s: %w: %s", gpuUUID, err, strings.TrimSpace(string(out)))
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("stop MPS daemon for GPU %s: %w", gpuUUID, err)
	}
	return nil
}

// Running lists the GPUs whose daemon has a control pipe.
func (m *MPSDaemons) Running(ctx context.Context) ([]string, error) {
	entries, err := os.ReadDir(m.Root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list MPS daemons: %w", err)
	}
	var out []string
	for _, e := range entries {
		if _, err := os.Stat(filepath.Join(m.Root, e.Name(), "pipe", "control")); err == nil {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out)
	return out, nil
}
