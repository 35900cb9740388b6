package suite

import (
	"regexp"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/test/builder"
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

	// Both shares run on the one GPU, each limited to its own share where the
	// plugin sets limits (MPS).
	unimplemented := ""
	for _, share := range []struct {
		a   allocation
		mib string
	}{{a1, "20480M"}, {a2, "30720M"}} {
		running, why := waitRunningOrUnimplemented(t, share.a.Pod)
		if why != "" {
			unimplemented = why
			break
		}
		checkPrepared(t, share.a, running)
		edits := containerEdits(t, running, "ctr")
		for _, kv := range edits.Env {
			if limit, ok := strings.CutPrefix(kv, "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT="); ok && !strings.HasSuffix(limit, "="+share.mib) {
				t.Errorf("share %s got memory limit %s, want %s", share.a.Claim.Name, limit, share.mib)
			}
		}
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
	if unimplemented != "" {
		t.Skipf("node-side prepare is not implemented yet; the plugin said: %s", unimplemented)
	}
	running := waitRunning(t, mig)
	checkPrepared(t, am, running)
}
