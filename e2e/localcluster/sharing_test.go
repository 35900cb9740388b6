package localcluster

import (
	"regexp"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/e2e/framework/kubelet"
	"github.com/tessera-gpu/tessera/internal/testing/builder"
)

// TestSharesColocateWhileMIGWaits runs on the node with one GPU, so nothing can go
// elsewhere: two shares (20Gi, 30Gi) land on the same gpu-0-shared, a MIG
// partition of that GPU waits until the shares are gone, and a claim preferring
// MIG over a share falls back to a share meanwhile.
func TestSharesColocateWhileMIGWaits(t *testing.T) {
	ns := newNamespace(t)
	createTemplate(t, ns, "share-20gi", builder.MakeRequest("gpu", gpuapi.ClassShared).Memory("20Gi").Obj())
	createTemplate(t, ns, "share-30gi", builder.MakeRequest("gpu", gpuapi.ClassShared).Memory("30Gi").Obj())
	createTemplate(t, ns, "mig-1g", builder.MakeRequest("gpu", gpuapi.ClassMIG).Profile("1g.18gb").Obj())
	createTemplate(t, ns, "mig-or-share", builder.FirstAvailable("gpu",
		builder.MakeRequest("mig", gpuapi.ClassMIG).Profile("1g.18gb"),
		builder.MakeRequest("share", gpuapi.ClassShared).Memory("10Gi"),
	))

	small := createPod(t, ns, "share-small", "share-20gi", onNode(nodeSmall))
	large := createPod(t, ns, "share-large", "share-30gi", onNode(nodeSmall))
	a1, a2 := waitAllocated(t, small), waitAllocated(t, large)
	r1, r2 := a1.Devices()[0], a2.Devices()[0]
	if r1.Pool != nodeSmall || r1.Device != "gpu-0-shared" || r2.Pool != r1.Pool || r2.Device != r1.Device {
		t.Fatalf("shares allocated on %s/%s and %s/%s, want both on %s/gpu-0-shared", r1.Pool, r1.Device, r2.Pool, r2.Device, nodeSmall)
	}
	if r1.ShareID == nil || r2.ShareID == nil || *r1.ShareID == *r2.ShareID {
		t.Errorf("shares need distinct share IDs, got %v and %v", r1.ShareID, r2.ShareID)
	}

	// Both shares run on the one GPU, each under an MPS daemon of its own:
	// each container gets its own claim's pipe directory and /dev/shm, none
	// of the other's, and its limits in its environment.
	mounted := map[string]string{} // host path -> claim
	for _, share := range []struct {
		a   allocation
		mib string
	}{{a1, "20480M"}, {a2, "30720M"}} {
		running := waitRunning(t, share.a.Pod)
		checkPrepared(t, share.a, running)
		checkMPSIsolation(t, share.a, containerEdits(t, running, "ctr"), share.mib, mounted)
	}

	mig := createPod(t, ns, "mig", "mig-1g", onNode(nodeSmall))
	ev := waitEvent(t, mig, "FailedScheduling")
	t.Logf("MIG pod waits: %s", ev.Message)
	if p, err := local.Client.CoreV1().Pods(ns).Get(t.Context(), mig.Name, metav1.GetOptions{}); err != nil || p.Spec.NodeName != "" {
		t.Fatalf("MIG pod was bound (node %q, err %v) while shares hold the GPU", p.Spec.NodeName, err)
	}

	// With the GPU time-shared, a claim that prefers MIG falls back to a share.
	flexible := createPod(t, ns, "flexible", "mig-or-share", onNode(nodeSmall))
	af := waitAllocated(t, flexible)
	if r := af.Devices()[0]; r.Device != "gpu-0-shared" || r.Request != "gpu/share" {
		t.Errorf("firstAvailable claim got %s for request %s, want gpu-0-shared for gpu/share", r.Device, r.Request)
	}

	for _, p := range []*corev1.Pod{small, large, flexible} {
		deletePod(t, p)
	}
	for _, a := range []allocation{a1, a2, af} {
		waitGone(t, a)
	}
	am := waitAllocated(t, mig)
	if d := am.Devices()[0]; d.Pool != nodeSmall || !regexp.MustCompile(`^gpu-0-mig-1g18gb-\d+$`).MatchString(d.Device) {
		t.Errorf("MIG claim allocated %s/%s, want a 1g.18gb partition of %s's gpu-0", d.Pool, d.Device, nodeSmall)
	}
	running := waitRunning(t, mig)
	checkPrepared(t, am, running)
}

// checkMPSIsolation checks what a share's container gets: a pipe directory
// and a /dev/shm that are its claim's own (named after the claim's UID, and
// not mounted into any container of another claim seen so far), and its
// memory limit in its environment.
func checkMPSIsolation(t *testing.T, a allocation, edits kubelet.ContainerEdits, mib string, mounted map[string]string) {
	t.Helper()
	want := map[string]bool{"/tmp/nvidia-mps": false, "/dev/shm": false}
	for _, m := range edits.Mounts {
		host, ctr, _ := strings.Cut(m, ":")
		if _, ok := want[ctr]; !ok {
			continue
		}
		want[ctr] = true
		if !strings.Contains(host, "/"+string(a.Claim.UID)+"/") {
			t.Errorf("claim %s mounts %s at %s; want a directory of its own claim %s", a.Claim.Name, host, ctr, a.Claim.UID)
		}
		if other, ok := mounted[host]; ok && other != a.Claim.Name {
			t.Errorf("claims %s and %s both mount %s", other, a.Claim.Name, host)
		}
		mounted[host] = a.Claim.Name
	}
	for ctr, ok := range want {
		if !ok {
			t.Errorf("claim %s's container has no mount at %s: %v", a.Claim.Name, ctr, edits.Mounts)
		}
	}
	env := map[string]string{}
	for _, kv := range edits.Env {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	if env["CUDA_MPS_PIPE_DIRECTORY"] != "/tmp/nvidia-mps" {
		t.Errorf("claim %s: CUDA_MPS_PIPE_DIRECTORY=%q, want /tmp/nvidia-mps", a.Claim.Name, env["CUDA_MPS_PIPE_DIRECTORY"])
	}
	if limit := env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"]; limit != "0="+mib {
		t.Errorf("claim %s: memory limit %q, want 0=%s", a.Claim.Name, limit, mib)
	}
}
