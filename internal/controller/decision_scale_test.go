package controller

import (
	"context"
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2/ktesting"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/internal/testing/builder"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

// countingReads counts the objects its reads return: what a decision visits
// in the cache.
type countingReads struct {
	client.Client
	objects *int
}

func (c countingReads) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	*c.objects++
	return c.Client.Get(ctx, key, obj, opts...)
}

func (c countingReads) List(ctx context.Context, list client.ObjectList, opts ...client.ListOption) error {
	if err := c.Client.List(ctx, list, opts...); err != nil {
		return err
	}
	*c.objects += meta.LenList(list)
	return nil
}

// clusterOf is sharingFixture grown by nodes more nodes, each with its own
// slice of two time-shared GPUs, a namespace of tenant b, one of no tenant,
// and in each an admitted share of that node's GPUs.
func clusterOf(nodes int, claims ...client.Object) []client.Object {
	objs := sharingFixture(claims...)
	for i := range nodes {
		node := fmt.Sprintf("m%d", i)
		slice := builder.MakeSlice(node+"-slice", node)
		for _, d := range []string{"gpu-0-shared", "gpu-1-shared"} {
			device := builder.MakeDevice(d).Capacity(gpuapi.CapMemory, "141Gi").Obj()
			device.AllowMultipleAllocations = ptr.To(true)
			slice.Device(device)
		}
		objs = append(objs, slice.Obj())
		for _, ns := range []struct{ name, tenant string }{{"b-" + node, "b"}, {"free-" + node, "none"}} {
			objs = append(objs, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns.name, Labels: map[string]string{tenancyv1.LabelCapsuleTenant: ns.tenant}}})
			for _, d := range []string{"gpu-0-shared", "gpu-1-shared"} {
				held := admittedShare(ns.name, "held-"+d, d)
				held.Status.Allocation.Devices.Results[0].Pool = node
				held.Status.Devices[0].Pool = node
				objs = append(objs, held)
			}
		}
	}
	return objs
}

// TestDecisionReadsIndependentOfClusterSize decides the same claims in a
// cluster of 1 and of 1,000 more nodes (each with slices, namespaces of a
// tenant and of none, and admitted shares): a decision visits the same
// number of objects in both (before the indexes, each decision listed every
// slice and, for shares, every claim).
func TestDecisionReadsIndependentOfClusterSize(t *testing.T) {
	decisions := []client.Object{
		// A share beside the tenant's admitted one, on the same node.
		pendingShare("a1", "x", "gpu-0-shared"),
		// A share of a GPU tenant b holds: refused by the guard.
		pendingShare("a2", "y", "gpu-1-shared"),
		// A share in a namespace of no tenant, of the GPU tenant a holds.
		pendingShare("free", "z", "gpu-0-shared"),
	}
	held := []client.Object{admittedShare("a1", "held", "gpu-0-shared"), admittedShare("b1", "held", "gpu-1-shared")}
	want := []tenancy.State{tenancy.Admitted, tenancy.Rejected, tenancy.Rejected}
	visited := map[int]map[string]int{}
	for _, nodes := range []int{1, 1000} {
		_, ctx := ktesting.NewTestContext(t)
		n := 0
		c := countingReads{Client: newSharingFake(t, clusterOf(nodes, append(held, decisions...)...)), objects: &n}
		r := &AdmissionReconciler{client: c, recorder: &fakeRecorder{reasons: map[string]int{}}, ledger: newLedger(), catalog: newDeviceCatalog(), decided: make(chan event.GenericEvent, 10), sharing: newSharingGuard()}
		visited[nodes] = map[string]int{}
		var got []tenancy.State
		for _, claim := range decisions {
			key := client.ObjectKeyFromObject(claim)
			n = 0
			if _, err := r.Reconcile(ctx, reconcile.Request{NamespacedName: key}); err != nil {
				t.Fatalf("%d nodes: reconcile %s: %v", nodes, key, err)
			}
			visited[nodes][key.String()] = n
			got = append(got, claimState(ctx, t, c.Client, key))
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%d nodes: decisions (-want +got):\n%s", nodes, diff)
		}
	}
	if diff := cmp.Diff(visited[1], visited[1000]); diff != "" {
		t.Errorf("objects a decision visits, 1 node (-) vs 1,000 nodes (+):\n%s", diff)
	}
	t.Logf("objects visited per decision: %v", visited[1000])
}
