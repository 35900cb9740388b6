// Package pidns translates the PIDs NVML reports into the plugin's own PID
// namespace. NVIDIA's driver does not support PID namespaces: NVML lists the
// processes on a GPU under their host PIDs, whatever namespace asks ("The
// nvidia-driver itself does not support pid-namespaces, so anytime you query
// it for the set of processes that are using GPUs, you will always get the
// host pids, not the container pids": NVIDIA's Kevin Klues in
// https://github.com/NVIDIA/nvidia-docker/issues/1483). A
// plugin in a PID namespace of its own reads the host's /proc, mounted
// read-only, to tell which of those processes are its own, and under which
// PID it sees them.
package pidns

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"github.com/tessera-gpu/tessera/internal/podcgroup"
)

// selfNamespace is the link that names this process's PID namespace.
const selfNamespace = "/proc/self/ns/pid"

// statusBuffer bounds how much of a status or cgroup file is read: the
// kernel writes a few KiB of status, NSpid among the first lines, and a line
// of a few hundred bytes per cgroup hierarchy.
const statusBuffer = 16 << 10

// HostProc translates host PIDs through the host's /proc.
type HostProc struct {
	root string
	// self is the target of this process's PID namespace link, e.g.
	// "pid:[4026531836]".
	self string
}

// Option configures a HostProc.
type Option func(*hostProcOptions)

type hostProcOptions struct{ self string }

// WithSelfNamespace reads this process's PID namespace from link instead
// of /proc/self/ns/pid (tests).
func WithSelfNamespace(link string) Option {
	return func(o *hostProcOptions) { o.self = link }
}

// New returns a translator through root, the host's /proc as this process
// sees it (e.g. /host/proc). It reads this process's PID namespace once: a
// process never changes its own.
func New(root string, opts ...Option) (*HostProc, error) {
	o := hostProcOptions{self: selfNamespace}
	for _, opt := range opts {
		opt(&o)
	}
	self, err := os.Readlink(o.self)
	if err != nil {
		return nil, fmt.Errorf("read this process's PID namespace: %w", err)
	}
	return &HostProc{root: root, self: self}, nil
}

// Check makes sure the root is the /proc of this process's PID namespace or
// of one that holds it (the host's): this process must find itself there,
// under its own PID once translated. A root that is no procfs, or the
// procfs of another namespace, fails, naming the root.
func (h *HostProc) Check() error {
	// <procfs>/self names the reader's PID as the procfs's namespace sees it.
	link, err := os.Readlink(filepath.Join(h.root, "self"))
	if err != nil {
		return fmt.Errorf("host /proc %s: %w", h.root, err)
	}
	hostPID, err := strconv.ParseUint(link, 10, 32)
	if err != nil {
		return fmt.Errorf("host /proc %s: self is %q, not a PID: is it a procfs?", h.root, link)
	}
	pid, ok, err := h.translate(uint32(hostPID))
	switch {
	case err != nil:
		return fmt.Errorf("host /proc %s: %w", h.root, err)
	case !ok || pid != os.Getpid():
		return fmt.Errorf("host /proc %s: this process (PID %d) is not in it under its own PID namespace: is it the host's procfs?", h.root, os.Getpid())
	}
	return nil
}

// Local returns the PID in this process's namespace of the process whose
// PID on the host is hostPID. A process in another PID namespace (a
// container's), or one that is gone, is not ours: ok is false.
func (h *HostProc) Local(hostPID uint32) (pid int, ok bool) {
	pid, ok, err := h.translate(hostPID)
	return pid, ok && err == nil
}

// PodUID returns the UID of the pod whose cgroup holds the process whose
// PID on the host is hostPID, for a process in another PID namespace than
// this process's (a container's), from its cgroup file (podcgroup.PodUID).
// ok is false for a process of this process's namespace, one that is gone,
// or one whose cgroup names no pod.
func (h *HostProc) PodUID(hostPID uint32) (uid string, ok bool) {
	dir, err := os.OpenRoot(filepath.Join(h.root, strconv.FormatUint(uint64(hostPID), 10)))
	if err != nil {
		return "", false
	}
	defer func() { _ = dir.Close() }()
	if ns, err := dir.Readlink("ns/pid"); err != nil || ns == h.self {
		return "", false
	}
	cgroup, err := readBounded(dir, "cgroup")
	if err != nil || len(cgroup) >= statusBuffer {
		// A file that fills the buffer may have been cut inside a line.
		return "", false
	}
	return podcgroup.PodUID(cgroup)
}

// translate reads <root>/<hostPID> through one directory handle, which
// stays bound to the process it was opened for: a PID reused between the
// reads fails them rather than mixing two processes.
func (h *HostProc) translate(hostPID uint32) (int, bool, error) {
	dir, err := os.OpenRoot(filepath.Join(h.root, strconv.FormatUint(uint64(hostPID), 10)))
	if err != nil {
		return 0, false, err
	}
	defer func() { _ = dir.Close() }()
	ns, err := dir.Readlink("ns/pid")
	if err != nil {
		return 0, false, err
	}
	if ns != h.self {
		return 0, false, nil
	}
	status, err := readBounded(dir, "status")
	if err != nil {
		return 0, false, err
	}
	pid, err := innermostPID(status)
	if err != nil {
		return 0, false, fmt.Errorf("process %d: %w", hostPID, err)
	}
	return pid, true, nil
}

// innermostPID returns the last PID of the NSpid line of a status file.
// proc(5): "NSpid: Thread ID in each of the PID namespaces of which [pid]
// is a member. The fields are ordered as for NStgid", and NStgid's "leftmost
// entry shows the value with respect to the PID namespace of the process
// that mounted this procfs (or the root namespace if mounted by the
// kernel), followed by the value in successively nested inner namespaces".
// For a process in this process's namespace, the innermost is ours.
func innermostPID(status []byte) (int, error) {
	for rest := status; len(rest) > 0; {
		line, next, _ := bytes.Cut(rest, []byte{'\n'})
		if v, ok := bytes.CutPrefix(line, []byte("NSpid:")); ok {
			fields := bytes.Fields(v)
			if len(fields) == 0 {
				return 0, errors.New("empty NSpid line")
			}
			pid, err := strconv.Atoi(string(fields[len(fields)-1]))
			if err != nil || pid <= 0 {
				return 0, fmt.Errorf("NSpid line %q holds no PID", line)
			}
			return pid, nil
		}
		rest = next
	}
	return 0, errors.New("status has no NSpid line (kernel older than 4.1?)")
}

// readBounded reads up to statusBuffer bytes of a file under dir.
func readBounded(dir *os.Root, name string) ([]byte, error) {
	f, err := dir.Open(name)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	return io.ReadAll(io.LimitReader(f, statusBuffer))
}
