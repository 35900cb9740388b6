package podcgroup_test

import (
	"testing"

	"github.com/tessera-gpu/tessera/internal/podcgroup"
)

const (
	uid  = "5f3c9a6e-1b2d-4c8e-9f01-23456789abcd"
	uid2 = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
	// escaped is uid as the systemd driver writes it.
	escaped = "5f3c9a6e_1b2d_4c8e_9f01_23456789abcd"
	ctr     = "3b1f0c2e9d8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c"
)

// TestPodUID reads the pod out of cgroup files as the kernel writes them
// for a container's process, in the kubelet's two driver forms, on cgroup
// v1 and v2, and as a reader in another cgroup namespace sees them.
func TestPodUID(t *testing.T) {
	systemdBurstable := "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + escaped + ".slice/cri-containerd-" + ctr + ".scope"
	for name, tc := range map[string]struct {
		file    string
		wantUID string
	}{
		"v2 cgroupfs burstable":  {file: "0::/kubepods/burstable/pod" + uid + "/" + ctr + "\n", wantUID: uid},
		"v2 cgroupfs guaranteed": {file: "0::/kubepods/pod" + uid + "/" + ctr + "\n", wantUID: uid},
		"v2 systemd burstable":   {file: "0::" + systemdBurstable + "\n", wantUID: uid},
		"v2 systemd guaranteed": {
			file:    "0::/kubepods.slice/kubepods-pod" + escaped + ".slice/cri-containerd-" + ctr + ".scope\n",
			wantUID: uid,
		},
		"v2 systemd behind a cgroup root": {
			file:    "0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod" + escaped + ".slice/crio-" + ctr + ".scope\n",
			wantUID: uid,
		},
		"v2 seen from another cgroup namespace": {file: "0::/../../../besteffort/pod" + uid + "/" + ctr + "\n", wantUID: uid},
		"v1 cgroupfs": {
			file: "12:memory:/kubepods/besteffort/pod" + uid + "/" + ctr + "\n11:devices:/kubepods/besteffort/pod" + uid + "/" + ctr +
				"\n2:cpu,cpuacct:/kubepods/besteffort/pod" + uid + "/" + ctr + "\n1:name=systemd:/kubepods/besteffort/pod" + uid + "/" + ctr + "\n0::/\n",
			wantUID: uid,
		},
		"v1 systemd": {
			file:    "12:memory:" + systemdBurstable + "\n4:pids:" + systemdBurstable + "\n1:name=systemd:" + systemdBurstable + "\n",
			wantUID: uid,
		},
		"a pod cgroup a container made under its own": {
			file:    "0::/kubepods/burstable/pod" + uid + "/" + ctr + "/pod" + uid2 + "\n",
			wantUID: uid,
		},
		"a host process":                 {file: "0::/system.slice/containerd.service\n"},
		"the root":                       {file: "0::/\n"},
		"no pod slice":                   {file: "0::/kubepods.slice/kubepods-burstable.slice\n"},
		"a slice no kubelet makes":       {file: "0::/user.slice/user-pod" + escaped + ".slice\n"},
		"not a UID":                      {file: "0::/kubepods/burstable/podcast/" + ctr + "\n"},
		"an upper-case UID":              {file: "0::/kubepods/burstable/pod5F3C9A6E-1B2D-4C8E-9F01-23456789ABCD/" + ctr + "\n"},
		"a systemd UID with dashes":      {file: "0::/kubepods.slice/kubepods-pod" + uid + ".slice\n"},
		"v1 lines naming two pods":       {file: "12:memory:/kubepods/pod" + uid + "/" + ctr + "\n11:devices:/kubepods/pod" + uid2 + "/" + ctr + "\n"},
		"a line that is no cgroup entry": {file: "0::/kubepods/pod" + uid + "/" + ctr + "\ngarbage\n"},
		"empty":                          {},
	} {
		t.Run(name, func(t *testing.T) {
			got, ok := podcgroup.PodUID([]byte(tc.file))
			if got != tc.wantUID || ok != (tc.wantUID != "") {
				t.Errorf("PodUID(%q) = %q, %v; want %q, %v", tc.file, got, ok, tc.wantUID, tc.wantUID != "")
			}
		})
	}
}
