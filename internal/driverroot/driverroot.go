// Package driverroot finds the NVIDIA driver's user-space files (the NVML
// library, nvidia-smi, the MPS control daemon) under a driver root as the
// plugin sees it. The plugin's image carries no driver: NVIDIA's own DRA
// driver likewise locates libnvidia-ml under the driver root and passes its
// path to NVML explicitly. Every lookup is confined to the root, symbolic
// links included, so that a driver installed in a container's file system
// (the GPU operator's /run/nvidia/driver) resolves inside that file system
// and never in the plugin's own.
package driverroot

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
)

// NVMLLibrary is the file name under which every driver installs NVML.
const NVMLLibrary = "libnvidia-ml.so.1"

// Root is a driver root as this process sees it, e.g. / for a driver
// installed on the host with the plugin running on the host, or
// /driver-root where the chart mounts the host's driver root.
type Root struct {
	path string
}

// New returns the driver root at path; empty means /.
func New(path string) Root {
	if path == "" {
		path = "/"
	}
	return Root{path: filepath.Clean(path)}
}

// Path returns the root's path.
func (r Root) Path() string { return r.path }

// multiarchTriplet is Debian's library directory name of this architecture.
func multiarchTriplet() string {
	switch runtime.GOARCH {
	case "arm64":
		return "aarch64-linux-gnu"
	case "ppc64le":
		return "powerpc64le-linux-gnu"
	}
	return "x86_64-linux-gnu"
}

// LibraryDirs are the directories, relative to a driver root, where the
// driver's libraries are looked for, in order: Debian and Ubuntu, RHEL and
// SUSE, other distributions (also the GPU operator's driver container,
// which installs the same way under /run/nvidia/driver), then the
// /usr/local/nvidia layout of GKE and of drivers installed for containers.
func LibraryDirs() []string {
	t := multiarchTriplet()
	return []string{
		"usr/lib/" + t, "usr/lib64", "usr/lib",
		"lib/" + t, "lib64", "lib",
		"usr/local/nvidia/lib64", "usr/local/nvidia/lib",
	}
}

// BinaryDirs are the directories, relative to a driver root, where the
// driver's binaries are looked for, in order.
func BinaryDirs() []string {
	return []string{"usr/bin", "usr/sbin", "bin", "sbin", "usr/local/nvidia/bin"}
}

// NotFoundError says that a file is in none of the places it was looked for.
type NotFoundError struct {
	// Name is the file looked for, e.g. libnvidia-ml.so.1.
	Name string
	// Root is the driver root as this process sees it.
	Root string
	// Tried lists every path tried, in order.
	Tried []string
}

func (e *NotFoundError) Error() string {
	return fmt.Sprintf("%s not found under driver root %s (tried %s)", e.Name, e.Root, strings.Join(e.Tried, ", "))
}

// NVML returns the path, as this process sees it, of the driver's NVML
// library. Links are resolved inside the root: the path returned is the
// library file itself, which dlopen can open whatever links the root holds.
func (r Root) NVML() (string, error) { return r.find(NVMLLibrary, LibraryDirs(), false) }

// Binary returns the path, as this process sees it, of the driver's
// executable name, e.g. nvidia-smi.
func (r Root) Binary(name string) (string, error) { return r.find(name, BinaryDirs(), true) }

func (r Root) find(name string, dirs []string, executable bool) (string, error) {
	nf := &NotFoundError{Name: name, Root: r.path}
	for _, dir := range dirs {
		rel := filepath.Join(dir, name)
		nf.Tried = append(nf.Tried, filepath.Join(r.path, rel))
		path, err := r.Resolve(rel)
		if err != nil {
			continue
		}
		st, err := os.Stat(path)
		if err != nil || !st.Mode().IsRegular() || (executable && st.Mode().Perm()&0o111 == 0) {
			continue
		}
		return path, nil
	}
	return "", nf
}

// Env returns the environment entries under which the driver's binaries
// run: LD_LIBRARY_PATH names the root's library directories that hold
// NVML, so that nvidia-smi and the MPS daemons load the driver's libraries
// rather than none (the image carries none); PATH starts with the root's
// binary directories, from which nvidia-cuda-mps-control starts
// nvidia-cuda-mps-server, followed by pathEnv, this process's PATH.
func (r Root) Env(pathEnv string) []string {
	var libs, bins []string
	for _, dir := range LibraryDirs() {
		if _, err := r.Resolve(filepath.Join(dir, NVMLLibrary)); err == nil {
			libs = append(libs, filepath.Join(r.path, dir))
		}
	}
	for _, dir := range BinaryDirs() {
		if st, err := os.Stat(filepath.Join(r.path, dir)); err == nil && st.IsDir() {
			bins = append(bins, filepath.Join(r.path, dir))
		}
	}
	if pathEnv != "" {
		bins = append(bins, pathEnv)
	}
	var env []string
	if len(libs) > 0 {
		env = append(env, "LD_LIBRARY_PATH="+strings.Join(libs, ":"))
	}
	return append(env, "PATH="+strings.Join(bins, ":"))
}

// maxLinks bounds the links followed in one lookup, as the kernel's
// ELOOP limit does.
const maxLinks = 40

// Resolve returns the path, as this process sees it, of rel inside the
// root with every symbolic link followed inside the root: an absolute
// link target is taken from the root, and ".." never leaves it. The file
// must exist.
func (r Root) Resolve(rel string) (string, error) {
	pending := splitPath(rel)
	var done []string // components resolved so far, all inside the root
	links := 0
	for len(pending) > 0 {
		c := pending[0]
		pending = pending[1:]
		switch c {
		case ".":
			continue
		case "..":
			if len(done) > 0 {
				done = done[:len(done)-1]
			}
			continue
		}
		cur := filepath.Join(append([]string{r.path}, append(done, c)...)...)
		st, err := os.Lstat(cur)
		if err != nil {
			return "", err
		}
		if st.Mode()&fs.ModeSymlink == 0 {
			done = append(done, c)
			continue
		}
		if links++; links > maxLinks {
			return "", fmt.Errorf("resolve %s under %s: too many links", rel, r.path)
		}
		target, err := os.Readlink(cur)
		if err != nil {
			return "", err
		}
		if filepath.IsAbs(target) {
			done = nil
		}
		pending = append(splitPath(target), pending...)
	}
	path := filepath.Join(append([]string{r.path}, done...)...)
	if _, err := os.Stat(path); err != nil {
		return "", err
	}
	return path, nil
}

func splitPath(p string) []string {
	var out []string
	for _, c := range strings.Split(filepath.ToSlash(p), "/") {
		if c != "" {
			out = append(out, c)
		}
	}
	return out
}

// IsNotFound reports whether err says a driver file was not found.
func IsNotFound(err error) bool {
	var nf *NotFoundError
	return errors.As(err, &nf)
}
