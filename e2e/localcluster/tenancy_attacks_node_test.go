package localcluster

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	resourcev1beta1 "k8s.io/api/resource/v1beta1"
	resourcev1beta2 "k8s.io/api/resource/v1beta2"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/util/retry"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/internal/testing/builder"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

// Attacks of the attack matrix by a compromised node (its kubelet's
// credentials, its plugin's token) and through DRA's beta API versions.

// attackKubeletNodeLabel: root on a node uses the kubelet's own credentials
// (system:node:<name>; the Node authorizer lets a node update any Node and
// leaves the rest to the NodeRestriction admission plugin) to put its own
// Node into a dedicated pool, and to take another node out of one. The pool
// label is under node-restriction.kubernetes.io, which NodeRestriction keeps
// from kubelets: every update is refused, through the Node and through its
// status, and the label stays as the admin set it.
func attackKubeletNodeLabel(ctx context.Context, t *testing.T) {
	t.Helper()
	for name, tc := range map[string]struct {
		kubelet, node, value string // value "": remove the label
	}{
		"its own Node into a pool":        {kubelet: tenancyNode.Name, node: tenancyNode.Name, value: poolA},
		"the pool's node out of the pool": {kubelet: tenancyNode.Name, node: poolNode.Name},
		"its own Node out of the pool":    {kubelet: poolNode.Name, node: poolNode.Name},
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "kubelet.kubeconfig")
			if err := local.WriteNodeKubeconfig(path, tc.kubelet); err != nil {
				t.Fatal(err)
			}
			kubelet := clientFor(t, path)
			for how, update := range map[string]func(context.Context, *corev1.Node) (*corev1.Node, error){
				"update": func(ctx context.Context, n *corev1.Node) (*corev1.Node, error) {
					return kubelet.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{})
				},
				"update status": func(ctx context.Context, n *corev1.Node) (*corev1.Node, error) {
					return kubelet.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
				},
			} {
				n, err := local.Client.CoreV1().Nodes().Get(ctx, tc.node, metav1.GetOptions{})
				if err != nil {
					t.Fatal(err)
				}
				was, hadLabel := n.Labels[tenancyv1.LabelNodePool]
				if tc.value == "" {
					delete(n.Labels, tenancyv1.LabelNodePool)
				} else {
					n.Labels[tenancyv1.LabelNodePool] = tc.value
				}
				_, err = update(ctx, n)
				after, getErr := local.Client.CoreV1().Nodes().Get(context.WithoutCancel(ctx), tc.node, metav1.GetOptions{})
				if getErr != nil {
					t.Fatal(getErr)
				}
				if now, has := after.Labels[tenancyv1.LabelNodePool]; now != was || has != hadLabel {
					t.Errorf("%s by the kubelet of %s: node %s's pool label is %q (set: %v), was %q (set: %v)", how, tc.kubelet, tc.node, now, has, was, hadLabel)
					restoreNodePoolLabel(t, tc.node, was, hadLabel)
				}
				if err == nil || !apierrors.IsForbidden(err) {
					t.Errorf("%s by the kubelet of %s: %v, want NodeRestriction's refusal", how, tc.kubelet, err)
				}
			}
		})
	}
}

// restoreNodePoolLabel puts a node's pool label back as the admin had it.
func restoreNodePoolLabel(t *testing.T, node, value string, set bool) {
	t.Helper()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		n, err := local.Client.CoreV1().Nodes().Get(context.Background(), node, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if set {
			n.Labels[tenancyv1.LabelNodePool] = value
		} else {
			delete(n.Labels, tenancyv1.LabelNodePool)
		}
		_, err = local.Client.CoreV1().Nodes().Update(context.Background(), n, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Errorf("restore node %s's pool label: %v", node, err)
	}
}

// attackUnderReportedMemory: a compromised tenancy node (its plugin's own
// token) publishes its whole H200s with 1Gi of memory each, so that tenant,
// whose budget is one H200's published memory, would be charged 2Gi for
// two of them. Tenancy charges a device no less than its product's
// published memory (141 GB for an H200), so the second GPU is over budget:
// at no moment are two of the tenant's claims admitted. The plugin is
// stopped meanwhile (its slices stay), or it would publish the truth again
// at once; it is started again after.
func attackUnderReportedMemory(ctx context.Context, t *testing.T, tenant *tenancyv1.GPUTenant, ns string) {
	t.Helper()
	node := local.Node(tenancyNode.Name)
	if node == nil {
		t.Fatalf("no node %s", tenancyNode.Name)
	}
	list, err := local.Client.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	whole := []string{gpuapi.WholeDeviceName(0), gpuapi.WholeDeviceName(1)}
	published := tenancy.DeviceMemory(ptrsOf(list.Items))[tenancy.DeviceID{Driver: gpuapi.DriverName, Pool: tenancyNode.Name, Device: whole[0]}]
	if published == 0 {
		t.Fatalf("the tenancy node publishes no memory for %s", whole[0])
	}
	updateTenant(t, tenant.Name, func(g *tenancyv1.GPUTenant) {
		g.Spec.Budget = &tenancyv1.Budget{GPUMemory: resource.NewQuantity(published, resource.BinarySI)}
	})

	asNode := clientFor(t, node.Options().Kubeconfig)
	if err := node.Plugin().Stop(30 * time.Second); err != nil {
		t.Fatalf("stop the plugin of %s: %v", node.Name, err)
	}
	t.Cleanup(func() {
		if err := node.StartPlugin(context.Background()); err != nil {
			t.Errorf("restart the plugin of %s: %v", node.Name, err)
		}
	})
	forged := resource.MustParse("1Gi")
	slices, err := node.Slices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for i := range slices {
		s := slices[i].DeepCopy()
		changed := false
		for j := range s.Spec.Devices {
			d := &s.Spec.Devices[j]
			if d.Name != whole[0] && d.Name != whole[1] {
				continue
			}
			d.Capacity[gpuapi.CapMemory] = resourceapi.DeviceCapacity{Value: forged}
			changed = true
			n++
		}
		if !changed {
			continue
		}
		if _, err := asNode.ResourceV1().ResourceSlices().Update(ctx, s, metav1.UpdateOptions{}); err != nil {
			t.Fatalf("the node's plugin token may not under-report memory in slice %s, so this does not try the attack: %v", s.Name, err)
		}
	}
	if n != len(whole) {
		t.Fatalf("under-reported %d of the tenancy node's %d whole GPUs", n, len(whole))
	}

	createTemplate(t, ns, "whole", builder.MakeRequest("gpu", gpuapi.ClassGPU).Obj())
	var pods []*corev1.Pod
	for _, name := range []string{"first", "second"} {
		pods = append(pods, createPod(t, ns, name, "whole", func(p *corev1.Pod) {
			onTenancyNodes(p)
			p.Spec.NodeSelector["kubernetes.io/hostname"] = tenancyNode.Name
		}))
	}
	// The attacker's goal is two admitted; the budget's answer is one
	// admitted and one refused over budget.
	var refused bool
	var last map[tenancy.State]int
	err = wait.PollUntilContextTimeout(ctx, pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		states, err := claimStates(ctx, ns)
		if err != nil {
			return false, nil
		}
		last = states
		if states[tenancy.Admitted] > 1 {
			return false, fmt.Errorf("%d of the tenant's whole H200s admitted on a budget of one H200's memory (%d bytes)", states[tenancy.Admitted], published)
		}
		if !refused {
			for _, p := range pods {
				for _, ev := range events(ctx, p, tenancyv1.ReasonOverBudget) {
					refused = refused || strings.Contains(ev.Message, "gpuMemory")
				}
			}
		}
		return states[tenancy.Admitted] == 1 && refused, nil
	})
	if err != nil {
		t.Fatalf("under-reported memory: %v (claims by state %v; OverBudget seen: %v; events: %s; %s)", err, last, refused, eventSummary(pods[0]), eventSummary(pods[1]))
	}
	for _, p := range pods {
		deletePod(t, p)
	}
}

// attackBetaAPI: a tenant sends its claim through resource.k8s.io/v1beta1
// and v1beta2 (served here, as where an admin turned them on), naming a
// class it may not use, for real. In v1beta1 a request names its class at
// its top level, with no "exactly"; the claims policy matches v1 and sees the
// request converted. Both are refused, and the namespace holds no claim
// after.
//
// With the betas served, the API server refuses every claim of a tenant's
// namespace written in them before the claims policy speaks: the sharing
// MutatingAdmissionPolicy matches v1 (Equivalent) and its patched v1 object
// cannot be converted back to the beta ("unknown conversion"). Either
// refusal keeps the attacker from the class; wantRefusedBeta accepts both.
func attackBetaAPI(ctx context.Context, t *testing.T, tenant *tenancyv1.GPUTenant, ns string) {
	t.Helper()
	want := []string{"GPUTenant " + tenant.Name, "request gpu", "DeviceClass " + gpuapi.ClassGPU}
	t.Run("v1beta1", func(t *testing.T) {
		_, err := local.Client.ResourceV1beta1().ResourceClaims(ns).Create(ctx, &resourcev1beta1.ResourceClaim{
			ObjectMeta: metav1.ObjectMeta{Name: "beta1", Namespace: ns},
			Spec: resourcev1beta1.ResourceClaimSpec{Devices: resourcev1beta1.DeviceClaim{Requests: []resourcev1beta1.DeviceRequest{{
				Name: "gpu", DeviceClassName: gpuapi.ClassGPU, AllocationMode: resourcev1beta1.DeviceAllocationModeExactCount, Count: 1,
			}}}},
		}, metav1.CreateOptions{})
		wantRefusedBeta(t, err, want...)
	})
	t.Run("v1beta2", func(t *testing.T) {
		_, err := local.Client.ResourceV1beta2().ResourceClaims(ns).Create(ctx, &resourcev1beta2.ResourceClaim{
			ObjectMeta: metav1.ObjectMeta{Name: "beta2", Namespace: ns},
			Spec: resourcev1beta2.ResourceClaimSpec{Devices: resourcev1beta2.DeviceClaim{Requests: []resourcev1beta2.DeviceRequest{{
				Name: "gpu", Exactly: &resourcev1beta2.ExactDeviceRequest{DeviceClassName: gpuapi.ClassGPU},
			}}}},
		}, metav1.CreateOptions{})
		wantRefusedBeta(t, err, want...)
	})
	for _, name := range []string{"beta1", "beta2"} {
		if c, err := local.Client.ResourceV1().ResourceClaims(ns).Get(ctx, name, metav1.GetOptions{}); err == nil {
			t.Errorf("namespace %s holds claim %s for class %s", ns, name, c.Spec.Devices.Requests[0].Exactly.DeviceClassName)
		}
	}
}

// wantRefusedBeta is wantRefused for a claim written in a beta version: the
// claims policy's refusal, or the sharing policy's failed conversion back to
// the beta.
func wantRefusedBeta(t *testing.T, err error, parts ...string) {
	t.Helper()
	if err != nil && strings.Contains(err.Error(), "unknown conversion") {
		t.Logf("refused by the conversion of the sharing policy's patch: %v", err)
		wantRefused(t, err)
		return
	}
	wantRefused(t, err, parts...)
}

// attackForeignPoolSlice: a compromised tenancy node (its plugin's own
// token) publishes, as a slice of its own node, the pool named after the
// dedicated pool's node: that node's whole GPU at 1Gi of memory, newer than
// what that node publishes, so that the dedicated GPU would cost a tenant
// next to nothing and the scheduler would take the forged slice. The
// node-isolation policy refuses it, no such slice exists after, and what
// tenancy costs the dedicated node's GPU at is unchanged.
func attackForeignPoolSlice(ctx context.Context, t *testing.T) {
	t.Helper()
	costed := func() int64 {
		t.Helper()
		list, err := local.Client.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return tenancy.DeviceMemory(ptrsOf(list.Items))[tenancy.DeviceID{Driver: gpuapi.DriverName, Pool: poolNode.Name, Device: gpuapi.WholeDeviceName(0)}]
	}
	// The whole GPU is withdrawn from the slices while a partition or share
	// of it is allocated; an earlier case's claims may still be going.
	var before int64
	if err := wait.PollUntilContextTimeout(ctx, pollEvery, waitTimeout, true, func(context.Context) (bool, error) {
		before = costed()
		return before != 0, nil
	}); err != nil {
		t.Fatalf("the dedicated node %s publishes no %s within %s", poolNode.Name, gpuapi.WholeDeviceName(0), waitTimeout)
	}
	asNode := clientFor(t, local.Node(tenancyNode.Name).Options().Kubeconfig)
	forged := builder.MakeSlice("forged-foreign-pool", tenancyNode.Name).Pool(poolNode.Name, 1<<40, 1).
		Device(builder.MakeDevice(gpuapi.WholeDeviceName(0)).Attr(gpuapi.AttrType, "gpu").Capacity(gpuapi.CapMemory, "1Gi").Gated().Obj()).Obj()
	_, err := asNode.ResourceV1().ResourceSlices().Create(ctx, forged, metav1.CreateOptions{})
	if _, getErr := local.Client.ResourceV1().ResourceSlices().Get(ctx, forged.Name, metav1.GetOptions{}); getErr == nil {
		t.Errorf("the forged slice %s exists", forged.Name)
		_ = local.Client.ResourceV1().ResourceSlices().Delete(context.WithoutCancel(ctx), forged.Name, metav1.DeleteOptions{})
	}
	if err == nil || !strings.Contains(err.Error(), "kubelet plugin of node "+tenancyNode.Name) {
		t.Errorf("a slice of %s in the pool named after %s: %v, want the node-isolation policy's refusal", tenancyNode.Name, poolNode.Name, err)
	}
	// The real slices give the device its memory, or nothing while it is
	// withdrawn (a claim of an earlier case can still be allocated on it
	// after the wait above: CI saw it withdrawn here once); the forged
	// device's 1Gi would be neither.
	if after := costed(); after != before && after != 0 {
		t.Errorf("the dedicated node's %s is costed at %d bytes, was %d", gpuapi.WholeDeviceName(0), after, before)
	}
}
