package node

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"testing"

	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/e2e/framework/realnode"
)

// TestContainersGetTheirDevices runs, on the real node, a pod per kind of
// device, as root and as a non-root user, and checks from inside the container
// what containerd made of the plugin's CDI spec: every device node of the spec
// carries its type, numbers and mode, and exists in the container as a
// character device with the spec's major:minor that the user can open as the
// mode allows, the UVM and MIG capability nodes included, which the host
// lacks, the environment is the spec's (the GPU's
// UUID in NVIDIA_VISIBLE_DEVICES for a whole GPU), a share has its MPS pipe
// directory and its own /dev/shm bind-mounted from the plugin's directories,
// and deleting the pod unprepares the claim.
func TestContainersGetTheirDevices(t *testing.T) {
	type check func(t *testing.T, got seen, want edits)
	wholeGPU := func(t *testing.T, got seen, want edits) {
		gpu0 := fmt.Sprintf("%d:0", realnode.GPUMajor)
		if got.nodes["/dev/nvidia0"] != "character special file "+gpu0+" rw" {
			t.Errorf("/dev/nvidia0 in the container: %q, want a character device %s the user can open", got.nodes["/dev/nvidia0"], gpu0)
		}
		for _, p := range []string{"/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"} {
			if got.nodes[p] == "" {
				t.Errorf("%s missing in the container (CUDA needs it; the runtime makes it from the spec)", p)
			}
		}
		uuid := gpu0UUID(t)
		if v := got.env["NVIDIA_VISIBLE_DEVICES"]; v != uuid {
			t.Errorf("NVIDIA_VISIBLE_DEVICES=%q, want GPU 0's UUID %q", v, uuid)
		}
	}
	mig := func(t *testing.T, got seen, want edits) {
		var caps []string
		for p := range want.nodes {
			if strings.HasPrefix(p, "/dev/nvidia-caps/") {
				caps = append(caps, p)
			}
		}
		if len(caps) != 2 {
			t.Errorf("MIG claim's spec has capability nodes %v, want the GPU instance's and the compute instance's", caps)
		}
		// The host has no capability node (the kernel driver creates none):
		// the runtime made the container's from the spec's numbers.
		for _, p := range caps {
			if _, err := os.Lstat(want.nodes[p].host); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("capability node %s exists on the host (%v); the fake driver root must not have it", want.nodes[p].host, err)
			}
			if got.nodes[p] == "" {
				t.Errorf("capability node %s missing in the container", p)
			}
		}
		if !strings.HasPrefix(got.env["NVIDIA_VISIBLE_DEVICES"], "MIG-") {
			t.Errorf("NVIDIA_VISIBLE_DEVICES=%q, want a MIG device UUID", got.env["NVIDIA_VISIBLE_DEVICES"])
		}
	}
	share := func(t *testing.T, got seen, want edits) {
		for _, p := range []string{"/tmp/nvidia-mps", "/dev/shm"} {
			host, ok := want.mounts[p]
			if !ok {
				t.Errorf("share's CDI spec mounts nothing at %s (mounts: %v)", p, want.mounts)
				continue
			}
			if got.files[p] != hostFile(t, host) {
				t.Errorf("%s in the container is %q, want the plugin's %s (%s)", p, got.files[p], host, hostFile(t, host))
			}
		}
		if got.files["/dev/shm"] == hostFile(t, "/dev/shm") {
			t.Errorf("the container's /dev/shm is the node's /dev/shm")
		}
		if v := got.env["CUDA_MPS_PIPE_DIRECTORY"]; v != "/tmp/nvidia-mps" {
			t.Errorf("CUDA_MPS_PIPE_DIRECTORY=%q, want /tmp/nvidia-mps", v)
		}
	}
	cases := map[string]struct {
		request resourceapi.DeviceRequest
		check   check
	}{
		"whole GPU": {request(gpuapi.ClassGPU), wholeGPU},
		"MIG 1g":    {request(gpuapi.ClassMIG, profileIs("1g.18gb")), mig},
		"share":     {withMemory(request(gpuapi.ClassShared), "20Gi"), share},
	}
	users := map[string][]podOption{"root": nil, "non-root": {asUser(1000, 1000)}}
	for _, name := range slices.Sorted(maps.Keys(cases)) {
		tc := cases[name]
		for _, user := range slices.Sorted(maps.Keys(users)) {
			t.Run(name+"/"+user, func(t *testing.T) {
				ns := newNamespace(t)
				claim := createClaim(t, ns, "gpu", tc.request)
				pod := waitRunning(t, createPod(t, ns, "probe", claim.Name, users[user]...))
				want := specEdits(t, claimSpec(t, claim))
				got := probe(t, pod, slices.Sorted(maps.Keys(want.nodes)), []string{"/tmp/nvidia-mps", "/dev/shm"})

				wantUID := "0"
				if user != "root" {
					wantUID = "1000"
				}
				if got.uid != wantUID {
					t.Errorf("container runs as uid %q, want %s", got.uid, wantUID)
				}
				for path, n := range want.nodes {
					if w := n.seenAs(got.uid); got.nodes[path] != w {
						t.Errorf("%s in the container: %q, want %q (spec's node, host path %s)", path, got.nodes[path], w, n.host)
					}
				}
				for k, v := range want.env {
					if got.env[k] != v && (strings.HasPrefix(k, "NVIDIA_") || strings.HasPrefix(k, "CUDA_")) {
						t.Errorf("%s=%q in the container, want the spec's %q", k, got.env[k], v)
					}
				}
				tc.check(t, got, want)

				deletePod(t, pod)
				waitUnprepared(t, claim)
				waitUnreserved(t, claim)
			})
		}
	}
}

// gpu0UUID is the uuid attribute the plugin published for gpu-0.
func gpu0UUID(t *testing.T) string {
	t.Helper()
	slices, err := local.Client.ResourceV1().ResourceSlices().List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range slices.Items {
		for _, d := range s.Spec.Devices {
			if d.Name == "gpu-0" && s.Spec.NodeName != nil && *s.Spec.NodeName == nodeName {
				if a, ok := d.Attributes[gpuapi.AttrUUID]; ok && a.StringValue != nil {
					return *a.StringValue
				}
			}
		}
	}
	t.Fatalf("no gpu-0 with a uuid attribute published for node %s", nodeName)
	return ""
}

// waitUnreserved waits until no pod holds the claim any more.
func waitUnreserved(t *testing.T, claim *resourceapi.ResourceClaim) {
	t.Helper()
	err := wait.PollUntilContextTimeout(t.Context(), pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		c, err := local.Client.ResourceV1().ResourceClaims(claim.Namespace).Get(ctx, claim.Name, metav1.GetOptions{})
		return err == nil && len(c.Status.ReservedFor) == 0, nil
	})
	if err != nil {
		t.Errorf("claim %s still reserved after its pod is gone: %v", claim.Name, err)
	}
}
