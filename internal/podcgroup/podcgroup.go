// Package podcgroup tells which pod a process belongs to from its cgroup
// file (/proc/<pid>/cgroup), where the kubelet and the container runtime
// put every container of a pod under the pod's own cgroup, named after the
// pod's UID. The kernel writes that file and a container cannot move its
// processes out of its cgroup without privileges tenants are not given, so
// the pod it names can be trusted where nothing the container writes can.
package podcgroup

import (
	"bytes"
	"slices"
	"strings"
)

// PodUID returns the UID of the pod whose cgroup holds the process whose
// cgroup file is file, as proc(5) describes it: one line per hierarchy,
// "hierarchy-ID:controller-list:cgroup-path" (cgroup v1), or the single
// line "0::cgroup-path" (cgroup v2). ok is false when no line names a pod
// or two lines name different pods.
//
// The pod's cgroup is named by the kubelet (k8s.io/kubernetes
// pkg/kubelet/cm, v1.37): pod_container_manager_linux.go GetPodContainerName
// puts it right under its QoS class's cgroup as podCgroupNamePrefix ("pod")
// + the pod's UID; node_container_manager_linux.go names the root
// "kubepods" (defaultNodeAllocatableCgroupName). With the cgroupfs driver
// the path reads as is, /kubepods/burstable/pod<uid>/<container> (a
// Guaranteed pod sits right under /kubepods); with the systemd driver,
// cgroup_manager_linux.go ToSystemd escapes "-" to "_" in each part
// (escapeSystemdCgroupName) and expands the joined name into slices,
// /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid with
// _>.slice, under which the runtime puts the container's scope
// (cri-containerd-<id>.scope).
//
// The path is relative to the reader's cgroup namespace root (cgroup_namespaces(7)),
// so a reader in a container of its own sees another pod's process as,
// e.g., /../../../besteffort/pod<uid>/<container>: the first part of the
// path shaped like a pod's cgroup is taken, wherever it is, since the pod's
// cgroup comes before anything a container could make under its own.
func PodUID(file []byte) (uid string, ok bool) {
	for rest := file; len(rest) > 0; {
		var line []byte
		line, rest, _ = bytes.Cut(rest, []byte{'\n'})
		if len(line) == 0 {
			continue
		}
		fields := strings.SplitN(string(line), ":", 3)
		if len(fields) != 3 {
			return "", false
		}
		u, found := pathPodUID(fields[2])
		switch {
		case !found:
		case uid == "":
			uid = u
		case uid != u:
			return "", false
		}
	}
	return uid, uid != ""
}

// pathPodUID returns the pod UID of the first part of a cgroup path named
// as the kubelet names a pod's cgroup.
func pathPodUID(path string) (string, bool) {
	for part := range strings.SplitSeq(path, "/") {
		if slice, ok := strings.CutSuffix(part, ".slice"); ok {
			// kubepods-pod<uid>.slice or kubepods-<qos>-pod<uid>.slice,
			// behind the kubelet's --cgroup-root if it has one
			// (kubelet-kubepods-...): the UID's own dashes are
			// underscores.
			parts := strings.Split(slice, "-")
			if len(parts) < 2 || !slices.Contains(parts[:len(parts)-1], "kubepods") {
				continue
			}
			if u, ok := strings.CutPrefix(parts[len(parts)-1], "pod"); ok && isUID(u, '_') {
				return strings.ReplaceAll(u, "_", "-"), true
			}
			continue
		}
		if u, ok := strings.CutPrefix(part, "pod"); ok && isUID(u, '-') {
			return u, true
		}
	}
	return "", false
}

// maxUIDLength bounds a pod UID: the API server makes RFC 4122 UUIDs (36
// characters); a static pod's is a 32-digit hash.
const maxUIDLength = 36

// isUID reports whether s is shaped as a pod UID: lower-case hexadecimal
// digits and the separator sep.
func isUID(s string, sep byte) bool {
	if s == "" || len(s) > maxUIDLength {
		return false
	}
	for i := range len(s) {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') && c != sep {
			return false
		}
	}
	return true
}
