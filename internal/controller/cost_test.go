package controller

import (
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
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

// h200Fixture is node n1 with eight time-shared H200s (141Gi each) and
// tenant "attacker" (sharing as given, GPU memory budget as given) with
// namespaces a1 and a2.
func h200Fixture(sharing tenancyv1.SharingPolicy, budget string, claims ...client.Object) []client.Object {
	slice := builder.MakeSlice("n1-slice", "n1")
	for i := range 8 {
		device := builder.MakeDevice(fmt.Sprintf("gpu-%d-shared", i)).Capacity(gpuapi.CapMemory, "141Gi").Capacity(gpuapi.CapCompute, "100").Obj()
		device.AllowMultipleAllocations = ptr.To(true)
		slice.Device(device)
	}
	tenant := builder.MakeTenant("attacker").Classes(gpuapi.ClassShared).Memory(budget).Sharing(sharing).Obj()
	ns := func(name string) *corev1.Namespace { return builder.MakeNamespace(name).Tenant("attacker").Obj() }
	return append([]client.Object{slice.Obj(), tenant, ns("a1"), ns("a2")}, claims...)
}

// smallShare is a pending claim of sharing group group allocated a share of
// memory and compute (percent) of device.
func smallShare(group, ns, name, device, memory string, compute int64) *resourceapi.ResourceClaim {
	c := pendingShare(ns, name, device)
	c.Spec.Devices.Requests = tenancy.SharingRequests(group, []resourceapi.DeviceRequest{{
		Name: "gpu", Exactly: &resourceapi.ExactDeviceRequest{DeviceClassName: gpuapi.ClassShared},
	}})
	c.Status.Allocation.Devices.Results[0].ConsumedCapacity = map[resourceapi.QualifiedName]resource.Quantity{
		gpuapi.CapMemory: resource.MustParse(memory), gpuapi.CapCompute: *resource.NewQuantity(compute, resource.DecimalSI),
	}
	return c
}

// TestBudgetBoundsWhatSharesDeny is an attack: a tenant with a 2Gi
// budget asks for a 256Mi, 1 % share of each of eight H200s. Charged for the
// memory the shares consume it would hold all eight GPUs (2Gi); charged for
// what it keeps others from using, it holds none. And the aggregation holds
// while the cache lags behind the decisions: the second share of a GPU the
// tenant already pays for is free, a share of another GPU is not.
func TestBudgetBoundsWhatSharesDeny(t *testing.T) {
	eight := func(group string) []*resourceapi.ResourceClaim {
		var out []*resourceapi.ResourceClaim
		for i := range 8 {
			out = append(out, smallShare(group, []string{"a1", "a2"}[i%2], fmt.Sprintf("s%d", i), fmt.Sprintf("gpu-%d-shared", i), "256Mi", 1))
		}
		return out
	}
	for name, tc := range map[string]struct {
		sharing    tenancyv1.SharingPolicy
		budget     string
		claims     []*resourceapi.ResourceClaim
		want       []tenancy.State
		wantMemory string
	}{
		"2Gi budget, eight H200s under Exclusive: none": {
			sharing: tenancyv1.SharingExclusive, budget: "2Gi", claims: eight("attacker"),
			want:       []tenancy.State{tenancy.Rejected, tenancy.Rejected, tenancy.Rejected, tenancy.Rejected, tenancy.Rejected, tenancy.Rejected, tenancy.Rejected, tenancy.Rejected},
			wantMemory: "0",
		},
		"one H200's budget under Exclusive: one GPU, as many shares of it as fit": {
			sharing: tenancyv1.SharingExclusive, budget: "141Gi",
			claims: []*resourceapi.ResourceClaim{
				smallShare("attacker", "a1", "x", "gpu-0-shared", "256Mi", 1), smallShare("attacker", "a2", "y", "gpu-0-shared", "100Gi", 90),
				smallShare("attacker", "a1", "z", "gpu-1-shared", "256Mi", 1),
			},
			want:       []tenancy.State{tenancy.Admitted, tenancy.Admitted, tenancy.Rejected},
			wantMemory: "141Gi",
		},
		"2Gi budget under Any: the compute fraction counts": {
			sharing: tenancyv1.SharingAny, budget: "2Gi", claims: eight(tenancyv1.GroupAny),
			// 1 % of 141Gi is 1.41Gi: one share fits, the second would pass 2Gi.
			want:       []tenancy.State{tenancy.Admitted, tenancy.Rejected, tenancy.Rejected, tenancy.Rejected, tenancy.Rejected, tenancy.Rejected, tenancy.Rejected, tenancy.Rejected},
			wantMemory: resource.NewQuantity((141<<30+99)/100, resource.BinarySI).String(),
		},
	} {
		t.Run(name, func(t *testing.T) {
			_, ctx := ktesting.NewTestContext(t)
			var objs []client.Object
			for _, c := range tc.claims {
				objs = append(objs, c)
			}
			stale, writer := newSharingFake(t, h200Fixture(tc.sharing, tc.budget, objs...)), newSharingFake(t, h200Fixture(tc.sharing, tc.budget, objs...))
			l := newLedger()
			r := &AdmissionReconciler{client: staleReads{Client: writer, reader: stale}, recorder: &fakeRecorder{reasons: map[string]int{}}, ledger: l, catalog: newDeviceCatalog(), decided: make(chan event.GenericEvent, 10)}
			var got []tenancy.State
			for _, c := range tc.claims {
				key := client.ObjectKeyFromObject(c)
				if _, err := r.Reconcile(ctx, reconcile.Request{NamespacedName: key}); err != nil {
					t.Fatalf("reconcile %s: %v", key, err)
				}
				got = append(got, claimState(ctx, t, writer, key))
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("states (-want +got):\n%s", diff)
			}
			claim := &resourceapi.ResourceClaim{}
			if err := writer.Get(ctx, client.ObjectKeyFromObject(tc.claims[len(tc.claims)-1]), claim); err != nil {
				t.Fatal(err)
			}
			if msg := claim.Status.Devices[0].Conditions[0].Message; !strings.Contains(msg, "is over budget: gpuMemory") {
				t.Errorf("the last claim's condition says %q, want the budget", msg)
			}

			// The tenant's status, from the up-to-date cache, shows the same cost.
			tr := &TenantReconciler{client: writer, recorder: &fakeRecorder{reasons: map[string]int{}}, ledger: l, catalog: newDeviceCatalog(), untenanted: UntenantedAllow, decided: make(chan event.GenericEvent)}
			status := reconcileTenant(t, tr, "attacker").Status
			if got := status.Usage.GPUMemory.String(); got != tc.wantMemory {
				t.Errorf("status.usage.gpuMemory = %s, want %s", got, tc.wantMemory)
			}
			if !meta.IsStatusConditionTrue(status.Conditions, tenancyv1.TenantBudgetExhausted) {
				t.Errorf("BudgetExhausted not set: %+v", status.Conditions)
			}
		})
	}
}
