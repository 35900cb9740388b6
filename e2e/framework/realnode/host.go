package realnode

import (
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Host is what CheckHost found out about the machine.
type Host struct {
	// CgroupV1 is set on a cgroup-v1 (or hybrid) host, where the kubelet must
	// be told failCgroupV1: false to start at all.
	CgroupV1 bool
	// Runc is the OCI runtime containerd runs containers with.
	Runc string
	// CNIBinDir holds the bridge, host-local and loopback CNI plugins.
	CNIBinDir string
	// Busybox is the static busybox the test images are made of.
	Busybox string
	// NoSysResource is set where this process lacks CAP_SYS_RESOURCE (some
	// sandboxes drop it): nothing may then lower an oom_score_adj, which
	// runc does for every pod sandbox (-998), so containerd must clamp the
	// scores to its own (restrict_oom_score_adj) or no pod starts.
	NoSysResource bool
}

// cniBinDirs are where Debian (containernetworking-plugins) and upstream
// releases put the CNI plugins.
var cniBinDirs = []string{"/usr/lib/cni", "/opt/cni/bin"}

// cgroupV1Controllers are the hierarchies kubelet's cgroupfs driver needs on a
// cgroup-v1 host.
var cgroupV1Controllers = []string{"cpu", "cpuacct", "cpuset", "memory", "pids", "devices", "freezer"}

// CheckHost checks, before anything starts, everything a real node needs from
// the machine, and returns one error that lists every missing piece with what
// to do about it. An empty binDir leaves out the check of the node's binaries
// (make node-e2e checks the host before it builds them).
func CheckHost(binDir string) (*Host, error) {
	h := &Host{}
	var problems []string
	add := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	if os.Geteuid() != 0 {
		add("must run as root (containerd, runc and the kubelet create cgroups, mounts and device nodes)")
	}
	var st unix.Statfs_t
	switch err := unix.Statfs("/sys/fs/cgroup", &st); {
	case err != nil:
		add("cannot stat /sys/fs/cgroup: %v", err)
	case st.Type == unix.CGROUP2_SUPER_MAGIC:
		if data, err := os.ReadFile("/sys/fs/cgroup/cgroup.controllers"); err != nil || !containsAll(strings.Fields(string(data)), "cpu", "memory", "pids") {
			add("cgroup v2 at /sys/fs/cgroup lacks the cpu, memory or pids controller (cgroup.controllers: %q)", strings.TrimSpace(string(data)))
		}
	default:
		h.CgroupV1 = true
		for _, c := range cgroupV1Controllers {
			if _, err := os.Stat(filepath.Join("/sys/fs/cgroup", c, "cgroup.procs")); err != nil {
				add("cgroup v1 hierarchy %s is not mounted at /sys/fs/cgroup/%s", c, c)
			}
		}
	}
	if caps, err := effectiveCaps(); err != nil {
		add("read capabilities: %v", err)
	} else {
		h.NoSysResource = caps&(1<<unix.CAP_SYS_RESOURCE) == 0
	}
	if err := tryMknod(); err != nil {
		add("cannot create device nodes (the fake driver root needs real character devices): %v", err)
	}
	if fs, err := os.ReadFile("/proc/filesystems"); err != nil || !strings.Contains(string(fs), "\toverlay\n") {
		add("the kernel has no overlay filesystem (containerd's overlayfs snapshotter); load the overlay module")
	}
	if p, err := exec.LookPath("runc"); err != nil {
		add("runc not found in PATH: apt-get install runc (or make node-e2e-host)")
	} else {
		h.Runc = p
	}
	for _, dir := range cniBinDirs {
		if hasAll(dir, "bridge", "host-local", "loopback") {
			h.CNIBinDir = dir
			break
		}
	}
	if h.CNIBinDir == "" {
		add("CNI plugins bridge, host-local and loopback not found in %s: apt-get install containernetworking-plugins (or make node-e2e-host)", strings.Join(cniBinDirs, " or "))
	}
	h.Busybox = "/bin/busybox"
	if err := checkStatic(h.Busybox); err != nil {
		add("%v: apt-get install busybox-static (or make node-e2e-host)", err)
	}
	var missing []string
	for _, b := range NodeBinaries {
		if binDir == "" {
			break
		}
		if _, err := os.Stat(filepath.Join(binDir, b)); err != nil {
			missing = append(missing, b)
		}
	}
	if len(missing) > 0 {
		add("%s missing in %s: run make node-binaries", strings.Join(missing, ", "), binDir)
	}
	if len(problems) > 0 {
		return h, errors.New("this machine cannot run a real node:\n  - " + strings.Join(problems, "\n  - ") + "\n(see docs/node-e2e.md)")
	}
	return h, nil
}

// effectiveCaps reads this process's effective capability set.
func effectiveCaps() (uint64, error) {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
	}
	return 0, errors.New("no CapEff in /proc/self/status")
}

func tryMknod() error {
	dir, err := os.MkdirTemp("", "tessera-mknod-")
	if err != nil {
		return err
	}
	return errors.Join(unix.Mknod(filepath.Join(dir, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))), os.RemoveAll(dir))
}

// checkStatic fails unless path is an ELF executable without an interpreter,
// which the test images, holding nothing but that file, need.
func checkStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("static busybox %s: %w", path, err)
	}
	defer func() { _ = f.Close() }() // read only: a failed close loses nothing
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked", path)
		}
	}
	return nil
}

func hasAll(dir string, names ...string) bool {
	for _, n := range names {
		if _, err := os.Stat(filepath.Join(dir, n)); err != nil {
			return false
		}
	}
	return true
}

func containsAll(have []string, want ...string) bool {
	set := map[string]bool{}
	for _, h := range have {
		set[h] = true
	}
	for _, w := range want {
		if !set[w] {
			return false
		}
	}
	return true
}
