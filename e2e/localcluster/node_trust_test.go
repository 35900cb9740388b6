package localcluster

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/util/retry"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/e2e/framework/cluster"
	"github.com/tessera-gpu/tessera/internal/testing/builder"
)

// What tenancy trusts in a node's slices : who may publish
// them, the binding conditions on their devices, and the pool their devices
// serve.

// attackKubeletSlices: root on node A uses the kubelet's own credentials
// (user system:node:A, group system:nodes; the Node authorizer lets a node
// create and update ResourceSlices of its node) to publish a Tessera slice
// and to change the plugin's. Both are refused by the slice-publishers
// policy, and no such slice exists after.
func attackKubeletSlices(ctx context.Context, t *testing.T) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kubelet.kubeconfig")
	if err := local.WriteNodeKubeconfig(path, nodeA); err != nil {
		t.Fatal(err)
	}
	kubelet := clientFor(t, path)
	const refused = "are published only by Tessera's kubelet plugin"
	forged := slice("isolation-kubelet", nodeA, nodeA)
	forged.Spec.Pool.Generation = 1 << 40 // newer than the plugin's: the scheduler would take it
	_, err := kubelet.ResourceV1().ResourceSlices().Create(ctx, forged, metav1.CreateOptions{})
	if err == nil || !strings.Contains(err.Error(), refused) {
		t.Errorf("the kubelet's slice: %v, want the slice-publishers policy's refusal", err)
	}
	if _, err := local.Client.ResourceV1().ResourceSlices().Get(ctx, forged.Name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("the kubelet's slice exists (err %v)", err)
		_ = local.Client.ResourceV1().ResourceSlices().Delete(context.WithoutCancel(ctx), forged.Name, metav1.DeleteOptions{})
	}
	own, err := node(t, nodeA).Slices(ctx)
	if err != nil || len(own) == 0 {
		t.Fatalf("list node A's slices: %v (%d)", err, len(own))
	}
	s := own[len(own)-1].DeepCopy()
	for i := range s.Spec.Devices {
		s.Spec.Devices[i].Capacity = nil
	}
	_, err = kubelet.ResourceV1().ResourceSlices().Update(ctx, s, metav1.UpdateOptions{})
	if err == nil || !strings.Contains(err.Error(), refused) {
		t.Errorf("the kubelet's update of the plugin's slice: %v, want the slice-publishers policy's refusal", err)
	}
}

// renderedPolicy renders the chart with values and returns its
// ValidatingAdmissionPolicy name.
func renderedPolicy(ctx context.Context, t *testing.T, name string, values ...string) *admissionv1.ValidatingAdmissionPolicy {
	t.Helper()
	manifest, err := cluster.RenderChart(ctx, cluster.DefaultHelm(), values)
	if err != nil {
		t.Fatal(err)
	}
	reader := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(manifest)))
	for {
		doc, err := reader.Read()
		if err != nil {
			t.Fatalf("no ValidatingAdmissionPolicy %s in the chart: %v", name, err)
		}
		var p admissionv1.ValidatingAdmissionPolicy
		if err := utilyaml.Unmarshal(doc, &p); err == nil && p.Kind == "ValidatingAdmissionPolicy" && p.Name == name {
			return &p
		}
	}
}

// TestNodeIsolationRequiresBindingConditions: the local cluster installs
// the chart with tenancy off (only the tenancy nodes run the plugin with
// --tenancy), so this test puts in place the node-isolation policy as the
// chart renders it with tenancy on, for its duration. Then the tenancy
// node's plugin may not publish a device without the binding conditions
// (which would be bound past every budget and the sharing check), and may
// still publish one with them.
func TestNodeIsolationRequiresBindingConditions(t *testing.T) {
	needCluster(t)
	startClean(t)
	ctx := testContext(t)
	name := cluster.ReleaseName + "-kubelet-plugin-node-isolation"
	withTenancy := renderedPolicy(ctx, t, name, "kubeletPlugin.tenancy=true")
	policies := local.Client.AdmissionregistrationV1().ValidatingAdmissionPolicies()
	var saved admissionv1.ValidatingAdmissionPolicySpec
	setSpec := func(spec admissionv1.ValidatingAdmissionPolicySpec) error {
		return retry.RetryOnConflict(retry.DefaultRetry, func() error {
			p, err := policies.Get(context.WithoutCancel(ctx), name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			p.Spec = spec
			_, err = policies.Update(context.WithoutCancel(ctx), p, metav1.UpdateOptions{})
			return err
		})
	}
	live, err := policies.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	saved = live.Spec
	if err := setSpec(withTenancy.Spec); err != nil {
		t.Fatal(err)
	}
	asA := clientFor(t, node(t, nodeA).Options().Kubeconfig)
	t.Cleanup(func() {
		if err := setSpec(saved); err != nil {
			t.Errorf("restore policy %s: %v", name, err)
			return
		}
		// The other nodes' plugins publish without binding conditions:
		// wait until the API server has the installed policy back.
		err := wait.PollUntilContextTimeout(context.Background(), pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
			s, err := asA.ResourceV1().ResourceSlices().Create(ctx, slice("isolation-restored", nodeA, nodeA), metav1.CreateOptions{})
			if err != nil {
				return false, nil
			}
			return true, asA.ResourceV1().ResourceSlices().Delete(ctx, s.Name, metav1.DeleteOptions{})
		})
		if err != nil {
			t.Errorf("policy %s restored, but node A's plugin still may not publish: %v", name, err)
		}
	})

	asTenancy := clientFor(t, node(t, tenancyNode.Name).Options().Kubeconfig)
	bare := slice("isolation-bare", tenancyNode.Name, tenancyNode.Name)
	// The API server takes up the changed policy within about a second.
	var refusal error
	err = wait.PollUntilContextTimeout(ctx, pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		s, err := asTenancy.ResourceV1().ResourceSlices().Create(ctx, bare, metav1.CreateOptions{})
		if err == nil {
			_ = asTenancy.ResourceV1().ResourceSlices().Delete(ctx, s.Name, metav1.DeleteOptions{})
			return false, nil
		}
		refusal = err
		return strings.Contains(err.Error(), "binding conditions"), nil
	})
	if err != nil {
		t.Fatalf("a device without binding conditions is still published by the tenancy node's plugin (last error %v)", refusal)
	}
	if !apierrors.IsInvalid(refusal) && !apierrors.IsForbidden(refusal) || !strings.Contains(refusal.Error(), "kubelet plugin of node "+tenancyNode.Name) {
		t.Errorf("refused, but not by the node-isolation policy: %v", refusal)
	}
	if _, err := local.Client.ResourceV1().ResourceSlices().Get(ctx, bare.Name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("the slice without binding conditions exists (err %v)", err)
	}

	t.Run("a device with them is published", func(t *testing.T) {
		gated := builder.MakeSlice("isolation-gated", tenancyNode.Name).Pool(tenancyNode.Name, 0, 1).Device(builder.MakeDevice("gpu-99").Gated().Obj()).Obj()
		s, err := asTenancy.ResourceV1().ResourceSlices().Create(ctx, gated, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("a gated device refused: %v", err)
		}
		if err := asTenancy.ResourceV1().ResourceSlices().Delete(context.WithoutCancel(ctx), s.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("delete: %v", err)
		}
	})
}

// attackForgedPool: a node publishes its devices in victim's dedicated pool
// (their pool attribute) without an admin having labelled it for that pool.
// The local cluster's dedicated node is that node while the test takes the
// admin's label off it. victim's pod, asking for its dedicated class on
// that node, is allocated there by the scheduler, but the controller
// refuses the allocation (PoolMismatch): the pod is never bound, its claim
// never admitted. With the label back, the same pod binds there.
func attackForgedPool(ctx context.Context, t *testing.T, victim *tenancyv1.GPUTenant, ns string) {
	t.Helper()
	class := waitDedicatedClass(ctx, t, victim.Name, gpuapi.ClassMIG)
	setPoolLabel := func(value string) {
		t.Helper()
		err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
			n, err := local.Client.CoreV1().Nodes().Get(context.WithoutCancel(ctx), poolNode.Name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if value == "" {
				delete(n.Labels, tenancyv1.LabelNodePool)
			} else {
				n.Labels[tenancyv1.LabelNodePool] = value
			}
			_, err = local.Client.CoreV1().Nodes().Update(context.WithoutCancel(ctx), n, metav1.UpdateOptions{})
			return err
		})
		if err != nil {
			t.Fatalf("label node %s: %v", poolNode.Name, err)
		}
	}
	setPoolLabel("")
	restored := false
	t.Cleanup(func() {
		if !restored {
			setPoolLabel(poolA)
		}
	})
	createTemplate(t, ns, "forged-pool", builder.MakeRequest("gpu", class).Profile("1g.18gb").Obj())
	pod := createPod(t, ns, "forged-pool", "forged-pool", func(p *corev1.Pod) {
		onTenancyNodes(p)
		p.Spec.NodeSelector["kubernetes.io/hostname"] = poolNode.Name
	})
	// The refusal, or the attacker's goal: the pod bound there.
	var refusal *corev1.Event
	err := wait.PollUntilContextTimeout(ctx, pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		got, err := local.Client.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		if got.Spec.NodeName != "" {
			return false, fmt.Errorf("the dedicated tenant's pod was bound to %s, a node not labelled for its pool", got.Spec.NodeName)
		}
		events, err := local.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + pod.Name})
		if err != nil {
			return false, nil
		}
		for i, ev := range events.Items {
			if ev.Reason == tenancyv1.ReasonPoolMismatch {
				refusal = &events.Items[i]
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("no %s refusal: %v", tenancyv1.ReasonPoolMismatch, err)
	}
	if !strings.Contains(refusal.Message, tenancyv1.LabelNodePool+"="+poolA) {
		t.Errorf("the controller refused with %q, want it to name the label the node lacks", refusal.Message)
	}
	assertNotBoundNorAdmitted(ctx, t, pod, "the dedicated tenant's pod, on a node not labelled for its pool,")
	// The control: labelled again, the node serves the pool, and the
	// scheduler's retry binds the same pod there.
	setPoolLabel(poolA)
	restored = true
	a := waitAllocated(t, pod)
	if a.Devices()[0].Pool != poolNode.Name {
		t.Errorf("allocated from pool %s, want %s", a.Devices()[0].Pool, poolNode.Name)
	}
	// Gone before the next case, which reads the node's whole GPU: while the
	// partition is allocated the GPU is withdrawn from the slices.
	deletePod(t, pod)
	waitGone(t, a)
}
