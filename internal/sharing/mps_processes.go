package sharing

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
)

// ProcessLister tells which processes run for which daemon: how the per-claim metrics attribute a
// shared GPU's processes, as NVML lists them, to the claims.
type ProcessLister interface {
	// Processes returns, by daemon ID, the PIDs (in this process's PID
	// namespace) of the processes that run for the daemon.
	Processes(ctx context.Context) (map[string][]int, error)
}

var _ ProcessLister = (*MPSDaemons)(nil)

// Processes scans this PID namespace once and returns each daemon's
// processes: launcher, control daemon, MPS servers and control clients,
// which all carry the daemon's pipe directory in the environment the plugin
// started them with (see daemonProcesses). Only the servers hold a GPU
// context, so only they appear in NVML's process lists. A container's
// processes live in other PID namespaces and are never listed here: what a
// tenant writes cannot put a process under another claim's daemon.
func (m *MPSDaemons) Processes(_ context.Context) (map[string][]int, error) {
	entries, err := os.ReadDir(m.procRoot())
	if err != nil {
		return nil, fmt.Errorf("list MPS daemon processes: %w", err)
	}
	out := map[string][]int{}
	// The plugin's own processes' environments are a few KiB: what it
	// gave them. One buffer serves the whole scan.
	buf := make([]byte, environBuffer)
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		env, err := m.readEnviron(pid, buf)
		if err != nil {
			continue // gone, or not ours to read
		}
		if pipe, ok := pipeDirectory(env); ok {
			if id, ok := m.daemonOfPipe(pipe); ok {
				out[id] = append(out[id], pid)
			}
		}
	}
	return out, nil
}

// environBuffer bounds how much of each environment Processes reads.
const environBuffer = 64 << 10

// pipeVar starts the pipe directory's entry in an environment.
var pipeVar = []byte("CUDA_MPS_PIPE_DIRECTORY=")

// pipeDirectory returns the value of CUDA_MPS_PIPE_DIRECTORY in a
// NUL-separated environment.
func pipeDirectory(env []byte) (string, bool) {
	for rest := env; len(rest) > 0; {
		entry, next, _ := bytes.Cut(rest, []byte{0})
		if v, ok := bytes.CutPrefix(entry, pipeVar); ok {
			return string(v), true
		}
		rest = next
	}
	return "", false
}

// readEnviron reads a process's environment into buf, bounded by its size.
func (m *MPSDaemons) readEnviron(pid int, buf []byte) ([]byte, error) {
	f, err := os.Open(filepath.Join(m.procRoot(), strconv.Itoa(pid), "environ"))
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	n := 0
	for n < len(buf) {
		k, err := f.Read(buf[n:])
		n += k
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	return buf[:n], nil
}

// daemonOfPipe returns the daemon whose pipe directory is pipe.
func (m *MPSDaemons) daemonOfPipe(pipe string) (string, bool) {
	if filepath.Base(pipe) != "pipe" || filepath.Dir(filepath.Dir(pipe)) != filepath.Clean(m.Root) {
		return "", false
	}
	id := filepath.Base(filepath.Dir(pipe))
	return id, validID(id) == nil && DaemonDirs(m.Root, id).Pipe == pipe
}
