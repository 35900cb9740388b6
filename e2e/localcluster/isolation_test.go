package localcluster

import (
	"context"
	"strings"
	"testing"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/e2e/framework/cluster"
	"github.com/tessera-gpu/tessera/internal/testing/builder"
)

// TestNodeIsolation runs as node A's kubelet plugin, with the pod-bound token the
// local cluster gives it, and tries what root on node A could do to node B's
// devices. The chart's node-isolation policy must refuse every attempt, and let
// the plugin write its own node's slices.
func TestNodeIsolation(t *testing.T) {
	needCluster(t)
	startClean(t)
	ctx := t.Context()
	asA := clientFor(t, node(t, nodeA).Options().Kubeconfig)
	slicesOfB, err := node(t, nodeB).Slices(ctx)
	if err != nil || len(slicesOfB) == 0 {
		t.Fatalf("list node B's slices: %v (%d)", err, len(slicesOfB))
	}

	attempts := map[string]func() error{
		"create a slice of node B": func() error {
			_, err := asA.ResourceV1().ResourceSlices().Create(ctx, slice("isolation-b", nodeB, nodeB), metav1.CreateOptions{})
			return err
		},
		"publish into node B's pool from node A": func() error {
			_, err := asA.ResourceV1().ResourceSlices().Create(ctx, slice("isolation-pool-b", nodeA, nodeB), metav1.CreateOptions{})
			return err
		},
		"publish a slice for all nodes": func() error {
			s := slice("isolation-all", "", nodeA)
			s.Spec.NodeName, s.Spec.AllNodes = nil, ptr.To(true)
			_, err := asA.ResourceV1().ResourceSlices().Create(ctx, s, metav1.CreateOptions{})
			return err
		},
		"strip node B's devices": func() error {
			s := slicesOfB[len(slicesOfB)-1].DeepCopy()
			s.Spec.Devices = nil
			_, err := asA.ResourceV1().ResourceSlices().Update(ctx, s, metav1.UpdateOptions{})
			return err
		},
		"taint node B's devices to evict its pods": func() error {
			s := slicesOfB[len(slicesOfB)-1].DeepCopy()
			for i := range s.Spec.Devices {
				s.Spec.Devices[i].Taints = append(s.Spec.Devices[i].Taints, resourceapi.DeviceTaint{Key: gpuapi.TaintKeyUnhealthy, Value: "forged", Effect: resourceapi.DeviceTaintEffectNoExecute})
			}
			_, err := asA.ResourceV1().ResourceSlices().Update(ctx, s, metav1.UpdateOptions{})
			return err
		},
		"delete node B's slice": func() error {
			return asA.ResourceV1().ResourceSlices().Delete(ctx, slicesOfB[0].Name, metav1.DeleteOptions{})
		},
	}
	for name, attempt := range attempts {
		t.Run(name, func(t *testing.T) {
			err := attempt()
			if err == nil {
				t.Fatal("node A's plugin was allowed")
			}
			if !apierrors.IsInvalid(err) && !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "kubelet plugin of node "+nodeA) {
				t.Errorf("refused, but not by the node-isolation policy: %v", err)
			}
		})
	}
	after, err := node(t, nodeB).Slices(ctx)
	if err != nil || len(after) != len(slicesOfB) {
		t.Errorf("node B's slices changed: %d before, %d after (%v)", len(slicesOfB), len(after), err)
	}

	t.Run("own node's slices are allowed", func(t *testing.T) {
		// Generation 0 is older than the plugin's pool, so the scheduler ignores
		// this slice, and the plugin removes it as not its own.
		s, err := asA.ResourceV1().ResourceSlices().Create(ctx, slice("isolation-own", nodeA, nodeA), metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("node A's plugin may not write its own node's slices: %v", err)
		}
		if err := asA.ResourceV1().ResourceSlices().Delete(context.WithoutCancel(ctx), s.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("delete own slice: %v", err)
		}
	})

	t.Run("the kubelet's credentials publish no Tessera slice", func(t *testing.T) {
		attackKubeletSlices(ctx, t)
	})

	t.Run("a token bound to no pod carries no node", func(t *testing.T) {
		pod := pluginPod(t, nodeA)
		unbound := tokenClient(t, pod.Spec.ServiceAccountName)
		_, err := unbound.ResourceV1().ResourceSlices().Create(ctx, slice("isolation-unbound", nodeA, nodeA), metav1.CreateOptions{})
		if err == nil || !strings.Contains(err.Error(), "carry no node") {
			t.Errorf("a plugin token without a node: %v, want the policy's refusal", err)
		}
	})
}

func slice(name, nodeName, pool string) *resourceapi.ResourceSlice {
	s := builder.MakeSlice(name, nodeName).Pool(pool, 0, 1).Device(builder.MakeDevice("gpu-99").Obj())
	if nodeName == "" {
		s.NoNode()
	}
	return s.Obj()
}

func clientFor(t *testing.T, kubeconfig string) kubernetes.Interface {
	t.Helper()
	config, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatalf("load kubeconfig %s: %v", kubeconfig, err)
	}
	c, err := kubernetes.NewForConfig(config)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// tokenClient is a client with a plain token of the ServiceAccount, bound to no pod.
func tokenClient(t *testing.T, serviceAccount string) kubernetes.Interface {
	t.Helper()
	tr, err := local.Client.CoreV1().ServiceAccounts(cluster.ReleaseNamespace).CreateToken(t.Context(), serviceAccount, &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create token: %v", err)
	}
	config := rest.AnonymousClientConfig(local.Config)
	config.BearerToken = tr.Status.Token
	c, err := kubernetes.NewForConfig(config)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func pluginPod(t *testing.T, nodeName string) *corev1.Pod {
	t.Helper()
	pod, err := local.PodOn(t.Context(), local.Install.Plugin.Spec.Selector, nodeName)
	if err != nil {
		t.Fatal(err)
	}
	return pod
}
