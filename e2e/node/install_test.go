package node

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

// TestPluginRunsAsTheChartsPod: the plugin that serves the node is the chart's
// DaemonSet pod, from the product image imported into containerd, its process
// in that pod's container (in the kubelet's pod cgroups), not a process the
// harness started beside the kubelet.
func TestPluginRunsAsTheChartsPod(t *testing.T) {
	needNode(t)
	pod, err := node.PluginPod(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(pod.OwnerReferences) != 1 || pod.OwnerReferences[0].Kind != "DaemonSet" {
		t.Errorf("plugin pod %s is owned by %v, want the chart's DaemonSet", pod.Name, pod.OwnerReferences)
	}
	if got, want := pod.Spec.Containers[0].Image, os.Getenv("TESSERA_IMAGE"); got != want {
		t.Errorf("plugin pod runs image %s, want the product image %s", got, want)
	}
	if len(pod.Status.ContainerStatuses) != 1 || pod.Status.ContainerStatuses[0].ContainerID == "" {
		t.Fatalf("plugin pod %s has no container: %+v", pod.Name, pod.Status.ContainerStatuses)
	}
	pid, err := node.ContainerProcess(t.Context(), pod.Status.ContainerStatuses[0].ContainerID)
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		t.Fatal(err)
	}
	if exe != "/dra-kubelet-plugin" {
		t.Errorf("the plugin container's process runs %s, want the image's /dra-kubelet-plugin", exe)
	}
	cgroup, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(cgroup), "kubepods") || !strings.Contains(string(cgroup), string(pod.UID)) {
		t.Errorf("the plugin process %d is in cgroups %q, want its pod's (kubepods, pod %s)", pid, strings.TrimSpace(string(cgroup)), pod.UID)
	}
	t.Logf("plugin pod %s (driver layout %s, driver root %s): process %d runs %s in %s", pod.Name, node.Driver.Name, node.DriverRoot, pid, exe, strings.TrimSpace(string(cgroup)))
}
