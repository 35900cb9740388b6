package localcluster

import (
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"tags.cncf.io/container-device-interface/pkg/cdi"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/e2e/framework/kubelet"
	"github.com/tessera-gpu/tessera/internal/testing/builder"
	drapb "k8s.io/kubelet/pkg/apis/dra/v1"
)

// TestDeletingPodsFreesDevices fills a node's eight GPUs with one claim, shows that
// a ninth pod waits, and that it is scheduled once the first pod is deleted.
func TestDeletingPodsFreesDevices(t *testing.T) {
	ns := newNamespace(t)
	createTemplate(t, ns, "eight", builder.MakeRequest("gpu", gpuapi.ClassGPU).Count(8).Obj())
	createTemplate(t, ns, "one", builder.MakeRequest("gpu", gpuapi.ClassGPU).Obj())

	all := createPod(t, ns, "all-gpus", "eight", onNode(nodeA))
	aAll := waitAllocated(t, all)
	if got := len(aAll.Devices()); got != 8 {
		t.Fatalf("claim got %d GPUs, want 8", got)
	}
	one := createPod(t, ns, "one-gpu", "one", onNode(nodeA))
	waitEvent(t, one, "FailedScheduling")

	deletePod(t, all)
	waitGone(t, aAll)
	aOne := waitAllocated(t, one)
	if r := aOne.Devices()[0]; r.Pool != nodeA {
		t.Errorf("freed GPU allocated from pool %s, want %s", r.Pool, nodeA)
	}

	running := waitRunning(t, one)
	checkPrepared(t, aOne, running)
	ids := containerEdits(t, running, "ctr").CDIDevices
	deletePod(t, running)
	waitGone(t, aOne)
	checkUnprepared(t, aOne, ids)
}

// TestPluginRestart restarts a node's plugin: it must register again and republish
// its pool, and claims it prepared before must keep working: prepare again returns
// the same CDI devices, they still resolve, and unprepare after the restart works.
func TestPluginRestart(t *testing.T) {
	ns := newNamespace(t)
	n := node(t, nodeB)
	createTemplate(t, ns, "one", builder.MakeRequest("gpu", gpuapi.ClassGPU).Obj())
	before := n.Kubelet.Registrations(gpuapi.DriverName)

	if err := n.RestartPlugin(t.Context(), false); err != nil {
		t.Fatalf("restart plugin: %v", err)
	}
	if got := n.Kubelet.Registrations(gpuapi.DriverName); got != before+1 {
		t.Errorf("plugin registered %d times after a restart, want %d", got, before+1)
	}

	pod := createPod(t, ns, "survivor", "one", onNode(nodeB))
	a := waitAllocated(t, pod)
	running := waitRunning(t, pod)
	checkPrepared(t, a, running)
	ids := containerEdits(t, running, "ctr").CDIDevices

	// A crash, not a clean stop: the checkpoint is all the plugin has.
	if err := n.RestartPlugin(t.Context(), true); err != nil {
		t.Fatalf("restart plugin after a crash: %v", err)
	}
	client, err := n.Kubelet.WaitForPlugin(t.Context(), gpuapi.DriverName, before+2)
	if err != nil {
		t.Fatal(err)
	}
	claimRef := &drapb.Claim{Namespace: a.Claim.Namespace, Name: a.Claim.Name, Uid: string(a.Claim.UID)}
	resp, err := client.NodePrepareResources(t.Context(), &drapb.NodePrepareResourcesRequest{Claims: []*drapb.Claim{claimRef}})
	if err != nil {
		t.Fatalf("prepare again after restart: %v", err)
	}
	res := resp.Claims[string(a.Claim.UID)]
	if res == nil || res.Error != "" {
		t.Fatalf("prepare again after restart: %+v", res)
	}
	var again []string
	for _, d := range res.Devices {
		again = append(again, d.CdiDeviceIds...)
	}
	if !slices.Equal(again, ids) {
		t.Errorf("prepare after restart returned CDI devices %v, before %v", again, ids)
	}
	cache, err := cdi.NewCache(cdi.WithSpecDirs(n.CDIRoot), cdi.WithAutoRefresh(false))
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if cache.GetDevice(id) == nil {
			t.Errorf("CDI device %s of a prepared claim does not resolve after the restart", id)
		}
	}

	next := createPod(t, ns, "newcomer", "one", onNode(nodeB))
	waitAllocated(t, next)
	waitRunning(t, next)

	deletePod(t, running)
	waitGone(t, a)
	checkUnprepared(t, a, ids)
}

// TestUnfittableClaimStaysPending asks for more GPUs than any node has: the pod
// stays pending and the scheduler says why.
func TestUnfittableClaimStaysPending(t *testing.T) {
	ns := newNamespace(t)
	createTemplate(t, ns, "nine", builder.MakeRequest("gpu", gpuapi.ClassGPU).Count(9).Obj())
	pod := createPod(t, ns, "greedy", "nine")
	ev := waitEvent(t, pod, "FailedScheduling")
	if !strings.Contains(ev.Message, "cannot allocate all claims") {
		t.Errorf("FailedScheduling says %q, want the DRA reason \"cannot allocate all claims\"", ev.Message)
	}
	p, err := local.Client.CoreV1().Pods(ns).Get(t.Context(), pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p.Spec.NodeName != "" || p.Status.Phase != corev1.PodPending {
		t.Errorf("pod is on node %q in phase %s, want unscheduled and Pending", p.Spec.NodeName, p.Status.Phase)
	}
}

// TestPrepareFailureIsReported gives claims opaque config the plugin must refuse
// (an unknown field; a claim choosing time slicing for its share, which only its
// DeviceClass may): the pod gets a Warning event with the plugin's message and
// does not start.
func TestPrepareFailureIsReported(t *testing.T) {
	for name, tc := range map[string]struct {
		request resourceapi.DeviceRequest
		config  string
		want    string
	}{
		"unknown-field": {
			request: builder.MakeRequest("gpu", gpuapi.ClassGPU).Obj(),
			config:  `{"apiVersion":"config.gpu.tessera.dev/v1alpha1","kind":"GPUConfig","noSuchField":true}`,
			want:    "noSuchField",
		},
		"claim-sets-the-sharing-of-its-share": {
			request: builder.MakeRequest("gpu", gpuapi.ClassShared).Memory("1Gi").Obj(),
			config:  `{"apiVersion":"config.gpu.tessera.dev/v1alpha1","kind":"GPUConfig","sharing":{"strategy":"TimeSlicing"}}`,
			want:    "the sharing of a time-shared GPU is set by its DeviceClass",
		},
	} {
		t.Run(name, func(t *testing.T) {
			ns := newNamespace(t)
			tmpl := builder.MakeClaim("bad-config").Namespace(ns).Request(tc.request).SpecConfig(tc.config, "gpu").Template()
			if _, err := local.Client.ResourceV1().ResourceClaimTemplates(ns).Create(t.Context(), tmpl, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			pod := createPod(t, ns, "misconfigured", "bad-config")
			waitAllocated(t, pod)
			ev := waitEvent(t, pod, kubelet.ReasonFailedPrepare)
			if ev.Type != corev1.EventTypeWarning || !strings.Contains(ev.Message, tc.want) {
				t.Errorf("event %s %q, want a Warning containing %q", ev.Type, ev.Message, tc.want)
			}
			p, err := local.Client.CoreV1().Pods(ns).Get(t.Context(), pod.Name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if p.Status.Phase != corev1.PodPending {
				t.Errorf("pod with refused config is %s, want Pending", p.Status.Phase)
			}
		})
	}
}
