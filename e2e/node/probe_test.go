package node

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	"tags.cncf.io/container-device-interface/pkg/cdi"
)

// seen is what a command inside a container reported about itself.
type seen struct {
	uid, gid string
	// nodes maps a device path to "<type> <major>:<minor> <access>", e.g.
	// "character special file 195:0 rw" (access r, w, rw or -).
	nodes map[string]string
	env   map[string]string
	// files maps a path to "<st_dev>:<inode>", which a bind mount shares
	// with its host source.
	files map[string]string
}

// probe runs, inside the pod's container, commands that report its user, the
// given device nodes (type, major:minor in hex, whether it may read, write or
// both), its NVIDIA_/CUDA_ environment and the identity of the given paths.
func probe(t *testing.T, pod *corev1.Pod, devicePaths, filePaths []string) seen {
	t.Helper()
	var script strings.Builder
	script.WriteString(`echo "uid $(id -u) $(id -g)"` + "\n")
	for _, p := range devicePaths {
		fmt.Fprintf(&script, `if [ -e %[1]s ]; then a=; [ -r %[1]s ] && a=r; [ -w %[1]s ] && a=${a}w; echo "node %[1]s $(stat -c '%%t:%%T' %[1]s) ${a:--} $(stat -c '%%F' %[1]s)"; fi`+"\n", p)
	}
	script.WriteString(`env | grep -E '^(NVIDIA|CUDA)_' | sed 's/^/env /'` + "\n")
	for _, p := range filePaths {
		fmt.Fprintf(&script, `if [ -e %[1]s ]; then echo "file %[1]s $(stat -c '%%d:%%i' %[1]s)"; fi`+"\n", p)
	}
	out := execIn(t, pod, script.String())
	s := seen{nodes: map[string]string{}, env: map[string]string{}, files: map[string]string{}}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		kind, rest, _ := strings.Cut(sc.Text(), " ")
		switch kind {
		case "uid":
			s.uid, s.gid, _ = strings.Cut(rest, " ")
		case "node":
			path, v, _ := strings.Cut(rest, " ")
			mm, v, _ := strings.Cut(v, " ")
			access, typ, _ := strings.Cut(v, " ")
			s.nodes[path] = fmt.Sprintf("%s %s %s", typ, hexToDec(mm), access)
		case "env":
			k, v, _ := strings.Cut(rest, "=")
			s.env[k] = v
		case "file":
			path, v, _ := strings.Cut(rest, " ")
			s.files[path] = v
		}
	}
	t.Logf("inside %s:\n%s", pod.Name, out)
	return s
}

// hexToDec turns stat's "c3:0" into "195:0".
func hexToDec(mm string) string {
	maj, mnr, _ := strings.Cut(mm, ":")
	a, err1 := strconv.ParseUint(maj, 16, 32)
	b, err2 := strconv.ParseUint(mnr, 16, 32)
	if err1 != nil || err2 != nil {
		return mm
	}
	return fmt.Sprintf("%d:%d", a, b)
}

// hostFile is "<st_dev>:<inode>" of a path on the host.
func hostFile(t *testing.T, path string) string {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatalf("stat %s on the host: %v", path, err)
	}
	return fmt.Sprintf("%d:%d", st.Dev, st.Ino)
}

// edits is what the claim's CDI spec tells the runtime to do to a container
// that uses all of the claim's devices.
type edits struct {
	// nodes maps container path to the spec's device node.
	nodes map[string]deviceNode
	// mounts maps container path to host path.
	mounts map[string]string
	env    map[string]string
}

// deviceNode is a device node as a CDI spec gives it.
type deviceNode struct {
	// host is the node's host path, which the host may lack.
	host         string
	typ          string
	major, minor int64
	mode         os.FileMode
}

// seenAs is what a user sees of the node in a container that the runtime
// made from the spec: a character device with the spec's numbers, which root
// may read and write and any other user as the node's mode lets others.
func (n deviceNode) seenAs(uid string) string {
	access := "rw"
	if uid != "0" {
		access = ""
		if n.mode&0o004 != 0 {
			access += "r"
		}
		if n.mode&0o002 != 0 {
			access += "w"
		}
		if access == "" {
			access = "-"
		}
	}
	return fmt.Sprintf("character special file %d:%d %s", n.major, n.minor, access)
}

// specEdits reads the spec's edits, failing the test for a device node the
// runtime could not create without the host's node: every node must carry
// its type, major, minor and mode, since the host lacks the nodes the
// kernel driver does not create (/dev/nvidia-caps/*, /dev/nvidia-uvm*).
func specEdits(t *testing.T, spec *cdi.Spec) edits {
	t.Helper()
	e := edits{nodes: map[string]deviceNode{}, mounts: map[string]string{}, env: map[string]string{}}
	addEnv := func(env []string) {
		for _, kv := range env {
			k, v, _ := strings.Cut(kv, "=")
			e.env[k] = v
		}
	}
	addEnv(spec.ContainerEdits.Env)
	if len(spec.ContainerEdits.DeviceNodes) > 0 {
		t.Errorf("CDI spec %s has device nodes outside its devices: %v", spec.GetPath(), spec.ContainerEdits.DeviceNodes)
	}
	for _, d := range spec.Devices {
		addEnv(d.ContainerEdits.Env)
		for _, n := range d.ContainerEdits.DeviceNodes {
			host := n.HostPath
			if host == "" {
				host = n.Path
			}
			if n.Type != "c" || n.Major <= 0 || n.FileMode == nil {
				t.Errorf("CDI spec %s, device %s: node %s has type %q, major %d, minor %d, mode %v; want a character device with its major, minor and mode", spec.GetPath(), d.Name, n.Path, n.Type, n.Major, n.Minor, n.FileMode)
				continue
			}
			e.nodes[n.Path] = deviceNode{host: host, typ: n.Type, major: n.Major, minor: n.Minor, mode: *n.FileMode}
		}
		for _, m := range d.ContainerEdits.Mounts {
			e.mounts[m.ContainerPath] = m.HostPath
		}
	}
	return e
}
