package kubelet

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apiresource "k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/klog/v2/ktesting"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/internal/testing/builder"
)

const (
	testDriver = gpuapi.DriverName
	testNode   = "node-1"
)

// fakePlugin is a DRA plugin whose prepare result per claim name is fixed by the test.
type fakePlugin struct {
	mu         sync.Mutex
	devices    map[string][]kubeletplugin.Device // by claim name
	errs       map[string]error                  // by claim name
	unprepared []string                          // claim names
	// prepareCalls and unprepareCalls hold the claim names of each call.
	prepareCalls, unprepareCalls [][]string
}

func (f *fakePlugin) PrepareResourceClaims(_ context.Context, claims []*resourceapi.ResourceClaim) (map[types.UID]kubeletplugin.PrepareResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[types.UID]kubeletplugin.PrepareResult{}
	var names []string
	for _, c := range claims {
		out[c.UID] = kubeletplugin.PrepareResult{Devices: f.devices[c.Name], Err: f.errs[c.Name]}
		names = append(names, c.Name)
	}
	slices.Sort(names)
	f.prepareCalls = append(f.prepareCalls, names)
	return out, nil
}

func (f *fakePlugin) UnprepareResourceClaims(_ context.Context, claims []kubeletplugin.NamespacedObject) (map[types.UID]error, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[types.UID]error{}
	var names []string
	for _, c := range claims {
		f.unprepared = append(f.unprepared, c.Name)
		out[c.UID] = nil
		names = append(names, c.Name)
	}
	slices.Sort(names)
	f.unprepareCalls = append(f.unprepareCalls, names)
	return out, nil
}

func (f *fakePlugin) HandleError(context.Context, error, string) {}

func (f *fakePlugin) WatchHealthStatus(context.Context, chan<- kubeletplugin.DeviceHealthReport) error {
	return kubeletplugin.ErrHealthNotSupported
}

func (f *fakePlugin) unpreparedClaims() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.unprepared)
}

// allocatedClaim and podUsing build a claim allocated on testNode and reserved for
// the pod of the same name.
func allocatedClaim(name string) *resourceapi.ResourceClaim {
	return builder.MakeClaim(name).UID("claim-"+name).Driver(testDriver).Pool(testNode).
		Device("gpu", "gpu-0").
		ReservedFor(name, types.UID("pod-"+name)).
		Obj()
}

func podUsing(name string) *corev1.Pod {
	claimName := name
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", UID: types.UID("pod-" + name)},
		Spec: corev1.PodSpec{
			NodeName:       testNode,
			ResourceClaims: []corev1.PodResourceClaim{{Name: "gpu", ResourceClaimName: &claimName}},
			Containers: []corev1.Container{
				{Name: "with-gpu", Resources: corev1.ResourceRequirements{Claims: []corev1.ResourceClaim{{Name: "gpu"}}}},
				{Name: "without"},
			},
		},
		Status: corev1.PodStatus{Phase: corev1.PodPending},
	}
}

// TestKubelet runs the stand-in against a real kubeletplugin helper on a fake
// plugin: registration, prepare, CDI resolution, status, events and unprepare.
func TestKubelet(t *testing.T) {
	spec := "cdiVersion: \"0.6.0\"\nkind: gpu.tessera.dev/gpu\ndevices:\n- name: gpu-0\n  containerEdits:\n    env: [\"NVIDIA_VISIBLE_DEVICES=GPU-0\"]\n    deviceNodes: [{path: /dev/nvidia0}]\n"
	plugin := &fakePlugin{
		devices: map[string][]kubeletplugin.Device{"good": {{Requests: []string{"gpu"}, PoolName: testNode, DeviceName: "gpu-0", CDIDeviceIDs: []string{"gpu.tessera.dev/gpu=gpu-0"}}}},
		errs:    map[string]error{"bad": errors.New("GPU 0 is on fire")},
	}
	n := startNode(t, plugin, spec, allocatedClaim("good"), podUsing("good"), allocatedClaim("bad"), podUsing("bad"))
	ctx, client, k, helper := n.ctx, n.client, n.kubelet, n.helper
	waitCtx, waitCancel := context.WithTimeout(ctx, 30*time.Second)
	defer waitCancel()
	if _, err := k.WaitForPlugin(waitCtx, testDriver, 1); err != nil {
		t.Fatal(err)
	}
	if status := helper.RegistrationStatus(); status == nil || !status.PluginRegistered {
		t.Errorf("plugin was told registration status %v, want registered", status)
	}

	poll := n.poll(t)
	var running *corev1.Pod
	poll("pod good running", func(ctx context.Context) bool {
		p, err := client.CoreV1().Pods("default").Get(ctx, "good", metav1.GetOptions{})
		running = p
		return err == nil && p.Status.Phase == corev1.PodRunning
	})
	raw := running.Annotations[EditsAnnotation]
	for _, want := range []string{`"with-gpu":{"cdiDevices":["gpu.tessera.dev/gpu=gpu-0"],"env":["NVIDIA_VISIBLE_DEVICES=GPU-0"],"deviceNodes":["/dev/nvidia0"]`, `"without":{"cdiDevices":null,"env":[]`} {
		if !strings.Contains(raw, want) {
			t.Errorf("container edits %s lack %s", raw, want)
		}
	}

	poll("warning event for pod bad", func(ctx context.Context) bool {
		evs, err := client.CoreV1().Events("default").List(ctx, metav1.ListOptions{})
		return err == nil && slices.ContainsFunc(evs.Items, func(e corev1.Event) bool {
			// The kubelet's words around the plugin's.
			return e.InvolvedObject.Name == "bad" && e.Type == corev1.EventTypeWarning && e.Reason == ReasonFailedPrepare &&
				strings.HasPrefix(e.Message, "Failed to prepare dynamic resources: prepare dynamic resources: NodePrepareResources failed for ResourceClaim bad: ") &&
				strings.Contains(e.Message, "GPU 0 is on fire")
		})
	})
	if p, err := client.CoreV1().Pods("default").Get(ctx, "bad", metav1.GetOptions{}); err != nil || p.Status.Phase != corev1.PodPending {
		t.Errorf("pod whose prepare failed: phase %v (err %v), want Pending", p.Status.Phase, err)
	}

	// The API server marks a bound pod for graceful deletion; the kubelet
	// unprepares and finishes the deletion.
	now := metav1.Now()
	running.DeletionTimestamp = &now
	if _, err := client.CoreV1().Pods("default").Update(ctx, running, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	poll("pod good deleted", func(ctx context.Context) bool {
		_, err := client.CoreV1().Pods("default").Get(ctx, "good", metav1.GetOptions{})
		return apierrors.IsNotFound(err)
	})
	if got := plugin.unpreparedClaims(); !slices.Equal(got, []string{"good"}) {
		t.Errorf("unprepared claims %v, want [good]", got)
	}
	if _, ok := k.Prepared()["claim-good"]; ok {
		t.Errorf("claim good still tracked as prepared")
	}
}

// TestKubeletBatchesAPodsClaims gives a pod two claims: as the kubelet does,
// the stand-in prepares both in one NodePrepareResources call and, once the
// pod is deleted, unprepares both in one NodeUnprepareResources call.
func TestKubeletBatchesAPodsClaims(t *testing.T) {
	pod := podUsing("two")
	first, second := "first", "second"
	pod.Spec.ResourceClaims = []corev1.PodResourceClaim{{Name: "gpu", ResourceClaimName: &first}, {Name: "more", ResourceClaimName: &second}}
	claims := []runtime.Object{pod}
	for i, name := range []string{first, second} {
		c := builder.MakeClaim(name).UID("claim-"+name).Driver(testDriver).Pool(testNode).
			Device("gpu", fmt.Sprintf("gpu-%d", i)).ReservedFor("two", pod.UID).Obj()
		claims = append(claims, c)
	}
	plugin := &fakePlugin{devices: map[string][]kubeletplugin.Device{
		first:  {{PoolName: testNode, DeviceName: "gpu-0"}},
		second: {{PoolName: testNode, DeviceName: "gpu-1"}},
	}}
	n := startNode(t, plugin, "", claims...)
	poll := n.poll(t)
	var running *corev1.Pod
	poll("pod two running", func(ctx context.Context) bool {
		p, err := n.client.CoreV1().Pods("default").Get(ctx, "two", metav1.GetOptions{})
		running = p
		return err == nil && p.Status.Phase == corev1.PodRunning
	})
	now := metav1.Now()
	running.DeletionTimestamp = &now
	if _, err := n.client.CoreV1().Pods("default").Update(n.ctx, running, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	poll("pod two deleted", func(ctx context.Context) bool {
		_, err := n.client.CoreV1().Pods("default").Get(ctx, "two", metav1.GetOptions{})
		return apierrors.IsNotFound(err)
	})
	plugin.mu.Lock()
	defer plugin.mu.Unlock()
	want := [][]string{{first, second}}
	if diff := cmp.Diff(want, plugin.prepareCalls); diff != "" {
		t.Errorf("NodePrepareResources calls (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(want, plugin.unprepareCalls); diff != "" {
		t.Errorf("NodeUnprepareResources calls (-want +got):\n%s", diff)
	}
}

// TestKubeletRefusesMissingMountSource gives a pod a CDI device that mounts a
// host directory that does not exist: like a real runtime the stand-in does
// not start the container and says why in a Warning event, as the kubelet
// reports a failed start; once the directory exists, the retried start runs it.
func TestKubeletRefusesMissingMountSource(t *testing.T) {
	pipe := filepath.Join(t.TempDir(), "mps", "pipe")
	spec := "cdiVersion: \"0.6.0\"\nkind: gpu.tessera.dev/gpu\ndevices:\n- name: gpu-0-shared\n  containerEdits:\n    mounts: [{hostPath: " + pipe + ", containerPath: /tmp/nvidia-mps}]\n"
	plugin := &fakePlugin{devices: map[string][]kubeletplugin.Device{"share": {{Requests: []string{"gpu"}, PoolName: testNode, DeviceName: "gpu-0-shared", CDIDeviceIDs: []string{"gpu.tessera.dev/gpu=gpu-0-shared"}}}}}
	n := startNode(t, plugin, spec, allocatedClaim("share"), podUsing("share"))
	poll := n.poll(t)
	poll("start failure event naming the mount source", func(ctx context.Context) bool {
		evs, err := n.client.CoreV1().Events("default").List(ctx, metav1.ListOptions{})
		return err == nil && slices.ContainsFunc(evs.Items, func(e corev1.Event) bool {
			return e.InvolvedObject.Name == "share" && e.Type == corev1.EventTypeWarning && e.Reason == ReasonFailedStart &&
				strings.Contains(e.Message, pipe) && strings.Contains(e.Message, "no such file or directory")
		})
	})
	if p, err := n.client.CoreV1().Pods("default").Get(n.ctx, "share", metav1.GetOptions{}); err != nil || p.Status.Phase != corev1.PodPending {
		t.Errorf("pod with a missing mount source: phase %v (err %v), want Pending", p.Status.Phase, err)
	}
	if err := os.MkdirAll(pipe, 0o755); err != nil {
		t.Fatal(err)
	}
	poll("pod share running once its mount source exists", func(ctx context.Context) bool {
		p, err := n.client.CoreV1().Pods("default").Get(ctx, "share", metav1.GetOptions{})
		return err == nil && p.Status.Phase == corev1.PodRunning
	})
}

// TestKubeletSharedClaim checks that a claim two pods use is prepared once and
// unprepared only when the last of them is gone, as kubelet does.
func TestKubeletSharedClaim(t *testing.T) {
	claim := allocatedClaim("shared")
	claim.Status.ReservedFor = []resourceapi.ResourceClaimConsumerReference{
		{Resource: "pods", Name: "first", UID: "pod-first"},
		{Resource: "pods", Name: "second", UID: "pod-second"},
	}
	first, second := podUsing("first"), podUsing("second")
	for _, p := range []*corev1.Pod{first, second} {
		name := "shared"
		p.Spec.ResourceClaims[0].ResourceClaimName = &name
	}
	plugin := &fakePlugin{devices: map[string][]kubeletplugin.Device{"shared": {{PoolName: testNode, DeviceName: "gpu-0"}}}}
	n := startNode(t, plugin, "", claim, first, second)
	ctx, client, k := n.ctx, n.client, n.kubelet
	poll := n.poll(t)
	running := map[string]*corev1.Pod{}
	poll("both pods running", func(ctx context.Context) bool {
		for _, name := range []string{"first", "second"} {
			p, err := client.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
			if err != nil || p.Status.Phase != corev1.PodRunning {
				return false
			}
			running[name] = p
		}
		return true
	})
	if got := len(k.Prepared()[claim.UID].Pods); got != 2 {
		t.Errorf("shared claim held by %d pods, want 2", got)
	}

	terminate := func(name string) {
		t.Helper()
		p := running[name]
		now := metav1.Now()
		p.DeletionTimestamp = &now
		if _, err := client.CoreV1().Pods("default").Update(ctx, p, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		poll("pod "+name+" deleted", func(ctx context.Context) bool {
			_, err := client.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
			return apierrors.IsNotFound(err)
		})
	}
	terminate("first")
	if got := plugin.unpreparedClaims(); len(got) != 0 {
		t.Errorf("claim unprepared (%v) while the second pod still uses it", got)
	}
	terminate("second")
	if got := plugin.unpreparedClaims(); !slices.Equal(got, []string{"shared"}) {
		t.Errorf("unprepared claims %v after both pods are gone, want [shared]", got)
	}
}

// fakeNode is a kubelet stand-in talking to a real kubeletplugin helper that
// serves a fake plugin, over a fake clientset.
type fakeNode struct {
	ctx     context.Context
	client  *fake.Clientset
	kubelet *Kubelet
	helper  *kubeletplugin.Helper
}

// startNode starts the plugin and the stand-in with objects in the API and, if
// cdiSpec is set, that CDI spec in the CDI directory.
func startNode(t *testing.T, plugin *fakePlugin, cdiSpec string, objects ...runtime.Object) fakeNode {
	t.Helper()
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	t.Cleanup(cancel)
	dir := t.TempDir()
	registrar, pluginDir, cdiRoot := filepath.Join(dir, "registry"), filepath.Join(dir, "plugin"), filepath.Join(dir, "cdi")
	for _, d := range []string{registrar, pluginDir, cdiRoot} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if cdiSpec != "" {
		if err := os.WriteFile(filepath.Join(cdiRoot, "spec.yaml"), []byte(cdiSpec), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	client := fake.NewClientset(objects...)
	helper, err := kubeletplugin.Start(ctx, plugin,
		kubeletplugin.DriverName(testDriver), kubeletplugin.KubeClient(client), kubeletplugin.NodeName(testNode),
		kubeletplugin.RegistrarDirectoryPath(registrar), kubeletplugin.PluginDataDirectoryPath(pluginDir))
	if err != nil {
		t.Fatalf("start plugin: %v", err)
	}
	t.Cleanup(helper.Stop)
	k := New(Options{NodeName: testNode, Client: client, RegistrarDir: registrar, CDIRoot: cdiRoot})
	if err := k.Run(ctx); err != nil {
		t.Fatal(err)
	}
	return fakeNode{ctx: ctx, client: client, kubelet: k, helper: helper}
}

// poll returns a function that waits up to 30 s for cond, failing the test with
// what otherwise.
func (n fakeNode) poll(t *testing.T) func(what string, cond func(context.Context) bool) {
	return func(what string, cond func(context.Context) bool) {
		t.Helper()
		ctx, cancel := context.WithTimeout(n.ctx, 30*time.Second)
		defer cancel()
		if err := wait.PollUntilContextCancel(ctx, 20*time.Millisecond, true, func(ctx context.Context) (bool, error) { return cond(ctx), nil }); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
}

// TestKubeletPreparesExtendedResourceClaim: a pod that asks for a DRA
// extended resource has no claim of its own; kube-scheduler makes one and
// names it, with which container each of its requests is for, in the pod's
// status. The stand-in prepares that claim, gives each container the devices
// of its requests only, and unprepares the claim with the pod.
func TestKubeletPreparesExtendedResourceClaim(t *testing.T) {
	spec := "cdiVersion: \"0.6.0\"\nkind: gpu.tessera.dev/gpu\ndevices:\n" +
		"- name: gpu-0\n  containerEdits:\n    env: [\"NVIDIA_VISIBLE_DEVICES=GPU-0\"]\n" +
		"- name: gpu-1\n  containerEdits:\n    env: [\"NVIDIA_VISIBLE_DEVICES=GPU-1\"]\n"
	const first, second = "container-0-request-0", "container-1-request-0"
	claim := builder.MakeClaim("ext").UID("claim-ext").Driver(testDriver).Pool(testNode).
		Device(first, "gpu-0").Device(second, "gpu-1").
		ReservedFor("ext", types.UID("pod-ext")).
		Obj()
	resource := corev1.ResourceName("deviceclass.resource.kubernetes.io/" + gpuapi.ClassGPU)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "ext", Namespace: "default", UID: types.UID("pod-ext")},
		Spec: corev1.PodSpec{
			NodeName: testNode,
			Containers: []corev1.Container{
				{Name: "a", Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{resource: apiresource.MustParse("1")}}},
				{Name: "b", Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{resource: apiresource.MustParse("1")}}},
				{Name: "none"},
			},
		},
		Status: corev1.PodStatus{Phase: corev1.PodPending, ExtendedResourceClaimStatus: &corev1.PodExtendedResourceClaimStatus{
			ResourceClaimName: "ext",
			RequestMappings: []corev1.ContainerExtendedResourceRequest{
				{ContainerName: "a", ResourceName: string(resource), RequestName: first},
				{ContainerName: "b", ResourceName: string(resource), RequestName: second},
			},
		}},
	}
	plugin := &fakePlugin{devices: map[string][]kubeletplugin.Device{"ext": {
		{Requests: []string{first}, PoolName: testNode, DeviceName: "gpu-0", CDIDeviceIDs: []string{"gpu.tessera.dev/gpu=gpu-0"}},
		{Requests: []string{second}, PoolName: testNode, DeviceName: "gpu-1", CDIDeviceIDs: []string{"gpu.tessera.dev/gpu=gpu-1"}},
	}}}
	n := startNode(t, plugin, spec, claim, pod)
	poll := n.poll(t)
	var running *corev1.Pod
	poll("pod ext running", func(ctx context.Context) bool {
		p, err := n.client.CoreV1().Pods("default").Get(ctx, "ext", metav1.GetOptions{})
		running = p
		return err == nil && p.Status.Phase == corev1.PodRunning
	})
	raw := running.Annotations[EditsAnnotation]
	for _, want := range []string{
		`"a":{"cdiDevices":["gpu.tessera.dev/gpu=gpu-0"],"env":["NVIDIA_VISIBLE_DEVICES=GPU-0"]`,
		`"b":{"cdiDevices":["gpu.tessera.dev/gpu=gpu-1"],"env":["NVIDIA_VISIBLE_DEVICES=GPU-1"]`,
		`"none":{"cdiDevices":null,"env":[]`,
	} {
		if !strings.Contains(raw, want) {
			t.Errorf("container edits %s lack %s", raw, want)
		}
	}
	now := metav1.Now()
	running.DeletionTimestamp = &now
	if _, err := n.client.CoreV1().Pods("default").Update(n.ctx, running, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	poll("pod ext deleted", func(ctx context.Context) bool {
		_, err := n.client.CoreV1().Pods("default").Get(ctx, "ext", metav1.GetOptions{})
		return apierrors.IsNotFound(err)
	})
	if got := plugin.unpreparedClaims(); !slices.Equal(got, []string{"ext"}) {
		t.Errorf("unprepared claims %v, want [ext]", got)
	}
}
