// Package mpsstandin is a stand-in for NVIDIA's nvidia-cuda-mps-control and
// nvidia-cuda-mps-server, for tests: a test binary calls Main from its
// TestMain and Install links the names that make it act as them. It
// behaves as nvidia-cuda-mps-control(1) describes, as far as the plugin can
// tell:
//
//   - "-f" runs the control daemon in the foreground; "-d" starts it in the
//     background and exits "when control daemon started listening for client
//     connections" (both from the man page's OPTIONS);
//   - the daemon listens on the "control" socket in CUDA_MPS_PIPE_DIRECTORY
//     (default /tmp/nvidia-mps), writes its PID to nvidia-cuda-mps-control.pid
//     there, and logs to control.log in CUDA_MPS_LOG_DIRECTORY (default
//     /var/log/nvidia-mps) (man page, ENVIRONMENT and FILES);
//   - run without options it is the client: it reads commands from stdin,
//     sends each to the daemon and prints the answer (man page, "When used
//     in interactive mode"); it fails when no daemon answers;
//   - commands: set_default_active_thread_percentage,
//     get_default_active_thread_percentage,
//     set_default_device_pinned_mem_limit, get_default_device_pinned_mem_limit,
//     start_server -uid, get_server_list and quit ("Shutdown the MPS control
//     daemon process and all MPS servers");
//   - a server is a process of its own that, like the real one, outlives a
//     control daemon that is killed: it ends only when the daemon quits. It
//     runs in a session of its own, the worst case for whoever must find it.
//
// It is not part of any shipped binary.
package mpsstandin

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Names of the stand-in's programs; Main acts as the one its argv[0] names.
const (
	ControlName  = "nvidia-cuda-mps-control"
	ServerName   = "nvidia-cuda-mps-server"
	LauncherName = "mps-launch"
	// PIDFile is where the daemon writes its PID, in the pipe directory.
	PIDFile = "nvidia-cuda-mps-control.pid"
	// LogFile is the daemon's log, in the log directory.
	LogFile = "control.log"
)

// LaunchFunc runs argv as the plugin's launcher does (sharing.Launch).
type LaunchFunc func(shmDir string, argv, env []string) error

// Main acts as the program argv[0] names, and exits, or returns when it
// names none of them (the test binary then runs its tests).
func Main(launch LaunchFunc) {
	switch filepath.Base(os.Args[0]) {
	case ControlName:
		os.Exit(control(os.Args[1:]))
	case ServerName:
		os.Exit(server())
	case LauncherName:
		args := os.Args[1:]
		var shm string
		if len(args) >= 2 && args[0] == "--shm" {
			shm, args = args[1], args[2:]
		}
		if len(args) == 0 || args[0] != "--" {
			fmt.Fprintln(os.Stderr, "usage: mps-launch [--shm DIR] -- COMMAND...")
			os.Exit(2)
		}
		if err := launch(shm, args[1:], os.Environ()); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
}

// Install links the stand-in's control binary, server and launcher into a
// temporary directory and returns the paths of the control binary and the
// launcher.
func Install(t testing.TB) (binary, launcher string) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	binary, launcher = filepath.Join(dir, ControlName), filepath.Join(dir, LauncherName)
	for _, link := range []string{binary, launcher, filepath.Join(dir, ServerName)} {
		if err := os.Symlink(exe, link); err != nil {
			t.Fatal(err)
		}
	}
	return binary, launcher
}

// sibling is the program name beside this one (see Install), so that its
// processes are named like NVIDIA's.
func sibling(name string) string {
	return filepath.Join(filepath.Dir(os.Args[0]), name)
}

func pipeDir() string {
	if d := os.Getenv("CUDA_MPS_PIPE_DIRECTORY"); d != "" {
		return d
	}
	return "/tmp/nvidia-mps"
}

func logDir() string {
	if d := os.Getenv("CUDA_MPS_LOG_DIRECTORY"); d != "" {
		return d
	}
	return "/var/log/nvidia-mps"
}

func control(args []string) int {
	switch {
	case len(args) == 0:
		return client()
	case args[0] == "-f":
		return daemon()
	case args[0] == "-d":
		return background()
	}
	fmt.Fprintf(os.Stderr, "unknown option %q\n", args[0])
	return 2
}

// client sends each command on stdin to the daemon and prints its answer.
func client() int {
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		answer, err := ask(filepath.Join(pipeDir(), "control"), in.Text())
		if err != nil {
			fmt.Fprintln(os.Stderr, "Cannot find MPS control daemon process:", err)
			return 1
		}
		if answer != "" {
			fmt.Println(answer)
		}
	}
	return 0
}

func ask(socket, command string) (string, error) {
	conn, err := net.DialTimeout("unix", socket, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer func() { _ = conn.Close() }()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintln(conn, command); err != nil {
		return "", err
	}
	answer, err := io.ReadAll(conn)
	return strings.TrimSpace(string(answer)), err
}

// background starts the daemon in a session of its own and returns once
// it listens.
func background() int {
	path := sibling(ControlName)
	cmd := &exec.Cmd{Path: path, Args: []string{path, "-f"}, Env: os.Environ()}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for range 250 {
		if _, err := ask(filepath.Join(pipeDir(), "control"), "get_server_list"); err == nil {
			return 0
		}
		time.Sleep(20 * time.Millisecond)
	}
	fmt.Fprintln(os.Stderr, "the daemon did not start listening")
	return 1
}

type state struct {
	mu      sync.Mutex
	log     *os.File
	threads string
	pinned  map[string]string
	servers []*exec.Cmd
}

func (s *state) logf(format string, args ...any) {
	_, _ = fmt.Fprintf(s.log, "%s [%d] %s\n", time.Now().UTC().Format(time.RFC3339Nano), os.Getpid(), fmt.Sprintf(format, args...))
}

// daemon is the control daemon in the foreground.
func daemon() int {
	pipe, logs := pipeDir(), logDir()
	logFile, err := os.OpenFile(filepath.Join(logs, LogFile), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	s := &state{log: logFile, threads: "100.0", pinned: map[string]string{}}
	socket := filepath.Join(pipe, "control")
	if _, err := ask(socket, "get_server_list"); err == nil {
		fmt.Fprintln(os.Stderr, "An instance of this daemon is already running")
		return 1
	}
	_ = os.Remove(socket)
	ln, err := net.Listen("unix", socket)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := os.WriteFile(filepath.Join(pipe, PIDFile), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	s.logf("Starting control daemon gpu=%s", os.Getenv("CUDA_VISIBLE_DEVICES"))
	for {
		conn, err := ln.Accept()
		if err != nil {
			return 1
		}
		if s.serve(conn) {
			_ = ln.Close()
			_ = os.Remove(socket)
			_ = os.Remove(filepath.Join(pipe, PIDFile))
			s.logf("Control daemon exited")
			return 0
		}
	}
}

// serve answers one command; it reports whether the daemon must quit.
func (s *state) serve(conn net.Conn) bool {
	defer func() { _ = conn.Close() }()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil && line == "" {
		return false
	}
	f := strings.Fields(line)
	if len(f) == 0 {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.logf("Command %s", strings.Join(f, " "))
	answer, quit := s.do(f)
	_, _ = fmt.Fprintln(conn, answer) // a client that went away gets no answer, as from the real daemon
	return quit
}

func (s *state) do(f []string) (string, bool) {
	switch {
	case f[0] == "set_default_active_thread_percentage" && len(f) == 2:
		p, err := strconv.ParseFloat(f[1], 64)
		if err != nil || p <= 0 || p > 100 {
			return "Invalid percentage", false
		}
		s.threads = strconv.FormatFloat(p, 'f', 1, 64)
		return s.threads, false
	case f[0] == "get_default_active_thread_percentage":
		return s.threads, false
	case f[0] == "set_default_device_pinned_mem_limit" && len(f) == 3:
		s.pinned[f[1]] = f[2]
		return "", false
	case f[0] == "get_default_device_pinned_mem_limit" && len(f) == 2:
		if v, ok := s.pinned[f[1]]; ok {
			return v, false
		}
		return "0", false
	case f[0] == "start_server" && len(f) == 3 && f[1] == "-uid":
		return s.startServer()
	case f[0] == "get_server_list":
		var pids []string
		for _, c := range s.servers {
			pids = append(pids, strconv.Itoa(c.Process.Pid))
		}
		return strings.Join(pids, "\n"), false
	case f[0] == "quit":
		for _, c := range s.servers {
			_ = c.Process.Signal(syscall.SIGTERM)
			_ = c.Wait()
		}
		return "", true
	}
	return "Unknown command " + strings.Join(f, " "), false
}

func (s *state) startServer() (string, bool) {
	path := sibling(ServerName)
	cmd := &exec.Cmd{Path: path, Args: []string{path}, Env: os.Environ()}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err.Error(), false
	}
	s.servers = append(s.servers, cmd)
	s.logf("Server %d started", cmd.Process.Pid)
	return strconv.Itoa(cmd.Process.Pid), false
}

// server waits to be told to end.
func server() int {
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	<-signals
	return 0
}

// ServerPIDs parses get_server_list's answer.
func ServerPIDs(answer string) ([]int, error) {
	var pids []int
	for _, f := range strings.Fields(answer) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			return nil, errors.New("not a server list: " + answer)
		}
		pids = append(pids, pid)
	}
	slices.Sort(pids)
	return pids, nil
}
