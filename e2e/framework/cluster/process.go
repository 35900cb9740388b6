package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// Process is one child process of the local cluster whose output goes to a log file.
// It is killed if the test binary dies, so a crashed test leaves nothing running.
type Process struct {
	Name    string
	LogPath string

	cmd  *exec.Cmd
	done chan struct{}
	mu   sync.Mutex
	err  error
}

// StartProcess starts binary with args, appending its stdout and stderr to
// <logDir>/<name>.log.
func StartProcess(name, logDir, binary string, args []string, env []string) (*Process, error) {
	logPath := filepath.Join(logDir, name+".log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open log for %s: %w", name, err)
	}
	cmd := exec.Command(binary, args...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.Env = append(os.Environ(), env...)
	// Pdeathsig ties the child's life to ours: an interrupted or crashed test run
	// must not leave an API server holding ports.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, errors.Join(fmt.Errorf("start %s (%s): %w", name, binary, err), logFile.Close())
	}
	p := &Process{Name: name, LogPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		if cerr := logFile.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("close log of %s: %w", name, cerr))
		}
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(p.done)
	}()
	return p, nil
}

// Exited reports whether the process has ended, and how.
func (p *Process) Exited() (bool, error) {
	select {
	case <-p.done:
		p.mu.Lock()
		defer p.mu.Unlock()
		return true, p.err
	default:
		return false, nil
	}
}

// Done is closed when the process has ended.
func (p *Process) Done() <-chan struct{} { return p.done }

// Stop asks the process to terminate and kills it if it has not within grace.
func (p *Process) Stop(grace time.Duration) error {
	if exited, _ := p.Exited(); exited {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case <-p.done:
		return nil
	case <-timer.C:
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("%s did not stop within %s and was killed", p.Name, grace)
	}
}

// Kill ends the process at once, as a crash would.
func (p *Process) Kill() {
	if exited, _ := p.Exited(); exited {
		return
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// Freeze stops the process (SIGSTOP) until Thaw, as a hung process would be:
// it keeps its connections and state, and decides nothing meanwhile.
func (p *Process) Freeze() error { return p.cmd.Process.Signal(syscall.SIGSTOP) }

// Thaw lets a frozen process go on (SIGCONT).
func (p *Process) Thaw() error { return p.cmd.Process.Signal(syscall.SIGCONT) }

// exitedError says that p died while something waited for it to become ready.
func exitedError(p *Process) error {
	_, err := p.Exited()
	if err == nil {
		err = errors.New("exited")
	}
	return fmt.Errorf("%s exited before it was ready (log: %s): %w", p.Name, p.LogPath, err)
}

// waitReady polls check until it succeeds, the process exits, or ctx ends.
func waitReady(ctx context.Context, p *Process, timeout time.Duration, check func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ticker := time.NewTicker(100 * time.Millisecond)
	defer ticker.Stop()
	var last error
	for {
		if last = check(ctx); last == nil {
			return nil
		}
		select {
		case <-p.done:
			return exitedError(p)
		case <-ctx.Done():
			return fmt.Errorf("%s not ready after %s (log: %s): %w", p.Name, timeout, p.LogPath, last)
		case <-ticker.C:
		}
	}
}
