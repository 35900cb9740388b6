package controller

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/runtime"
	resourcev1ac "k8s.io/client-go/applyconfigurations/resource/v1"
	"k8s.io/klog/v2/ktesting"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

// ruleWrites is a fake client over objs that counts the writes of
// DeviceTaintRules (create, update, apply, delete) in *n.
func ruleWrites(t *testing.T, objs []client.Object, n *int) client.Client {
	t.Helper()
	scheme, err := Scheme()
	if err != nil {
		t.Fatal(err)
	}
	count := func(obj client.Object) {
		if _, ok := obj.(*resourceapi.DeviceTaintRule); ok {
			*n++
		}
	}
	return withIndexes(fake.NewClientBuilder()).WithScheme(scheme).WithObjects(objs...).
		WithStatusSubresource(&resourceapi.ResourceClaim{}, &tenancyv1.GPUTenant{}).
		WithInterceptorFuncs(interceptor.Funcs{
			Create: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.CreateOption) error {
				count(obj)
				return c.Create(ctx, obj, opts...)
			},
			Update: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.UpdateOption) error {
				count(obj)
				return c.Update(ctx, obj, opts...)
			},
			Apply: func(ctx context.Context, c client.WithWatch, obj runtime.ApplyConfiguration, opts ...client.ApplyOption) error {
				if _, ok := obj.(*resourcev1ac.DeviceTaintRuleApplyConfiguration); ok {
					*n++
				}
				return c.Apply(ctx, obj, opts...)
			},
			// A delete of what is gone already (a stale cache's) writes nothing.
			Delete: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.DeleteOption) error {
				err := c.Delete(ctx, obj, opts...)
				if err == nil {
					count(obj)
				}
				return err
			},
		}).Build()
}

// waitingShare is an unallocated claim in ns for a share, with tolerations
// exactly as given (no admission policy shaped it).
func waitingShare(ns, name string, tols ...resourceapi.DeviceToleration) *resourceapi.ResourceClaim {
	c := pendingShare(ns, name, "gpu-0-shared")
	c.Spec.Devices.Requests = []resourceapi.DeviceRequest{{Name: "gpu", Exactly: &resourceapi.ExactDeviceRequest{
		DeviceClassName: gpuapi.ClassShared, Tolerations: tols,
	}}}
	c.Status = resourceapi.ResourceClaimStatus{}
	return c
}

// TestFreeTaintsSurviveAClaimLoop: an attack. A namespace of no tenant
// creates and deletes, in a loop, a claim that tolerates another tenant's
// taint (which the untenanted policy leaves alone, so it does not tolerate
// the free taint), with or without a key; no pod needed. The free taints do
// not change and no rule is written.
func TestFreeTaintsSurviveAClaimLoop(t *testing.T) {
	for name, tol := range map[string]resourceapi.DeviceToleration{
		"another tenant's taint":          tenancy.Toleration("a"),
		"another tenant's taint, no key":  {Operator: resourceapi.DeviceTolerationOpEqual, Value: "a", Effect: resourceapi.DeviceTaintEffectNoSchedule},
		"a group that does not exist yet": tenancy.Toleration("nobody"),
	} {
		t.Run(name, func(t *testing.T) {
			_, ctx := ktesting.NewTestContext(t)
			var writes int
			c := ruleWrites(t, sharingFixture(), &writes)
			r := &SharingReconciler{client: c}
			reconcileOnce := func() {
				t.Helper()
				if _, err := r.Reconcile(ctx, reconcile.Request{}); err != nil {
					t.Fatal(err)
				}
			}
			reconcileOnce()
			free := map[string]string{"gpu-0-shared": tenancyv1.GroupFree, "gpu-1-shared": tenancyv1.GroupFree}
			if diff := cmp.Diff(free, taints(ctx, t, c)); diff != "" {
				t.Fatalf("before the loop (-want +got):\n%s", diff)
			}
			writes = 0
			for range 50 {
				claim := waitingShare("free", "attack", tol)
				if err := c.Create(ctx, claim); err != nil {
					t.Fatal(err)
				}
				reconcileOnce()
				if diff := cmp.Diff(free, taints(ctx, t, c)); diff != "" {
					t.Fatalf("while the claim exists (-want +got):\n%s", diff)
				}
				if err := c.Delete(ctx, claim); err != nil {
					t.Fatal(err)
				}
				reconcileOnce()
			}
			if writes != 0 {
				t.Errorf("the loop cost %d rule writes, want none", writes)
			}
		})
	}
}

// TestFreeTaintWithdrawalIsRateBounded: claims that do tolerate no tenancy
// taint at all (from before the sharing policies) withdraw the free taints
// while they wait, but created and deleted in a loop they withdraw them at
// most once per freeWithdrawalInterval: one withdrawal and one restoration,
// however many claims. One that waits when the interval has passed withdraws
// them again.
func TestFreeTaintWithdrawalIsRateBounded(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	var writes int
	c := ruleWrites(t, sharingFixture(), &writes)
	now := time.Date(2026, 12, 5, 22, 0, 0, 0, time.UTC)
	r := &SharingReconciler{client: c, now: func() time.Time { return now }}
	reconcileOnce := func() reconcile.Result {
		t.Helper()
		res, err := r.Reconcile(ctx, reconcile.Request{})
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	reconcileOnce()
	free := map[string]string{"gpu-0-shared": tenancyv1.GroupFree, "gpu-1-shared": tenancyv1.GroupFree}
	writes = 0

	legacy := waitingShare("free", "legacy")
	for i := range 30 {
		if err := c.Create(ctx, legacy.DeepCopy()); err != nil {
			t.Fatal(err)
		}
		res := reconcileOnce()
		if i == 0 {
			if got := taints(ctx, t, c); len(got) != 0 {
				t.Fatalf("the first waiting claim left free taints %v", got)
			}
		} else {
			if diff := cmp.Diff(free, taints(ctx, t, c)); diff != "" {
				t.Fatalf("claim %d, %v after the withdrawal (-want +got):\n%s", i, time.Duration(i)*time.Second, diff)
			}
			if want := freeWithdrawalInterval - time.Duration(i)*time.Second; res.RequeueAfter != want {
				t.Errorf("claim %d: requeue after %v, want %v", i, res.RequeueAfter, want)
			}
		}
		if err := c.Delete(ctx, legacy.DeepCopy()); err != nil {
			t.Fatal(err)
		}
		reconcileOnce()
		now = now.Add(time.Second)
	}
	if want := 4; writes != want {
		t.Errorf("30 claims in 30 s cost %d rule writes, want %d (2 GPUs' free rules deleted and created once)", writes, want)
	}

	now = now.Add(freeWithdrawalInterval)
	if err := c.Create(ctx, legacy.DeepCopy()); err != nil {
		t.Fatal(err)
	}
	reconcileOnce()
	if got := taints(ctx, t, c); len(got) != 0 {
		t.Errorf("a claim waiting after the interval left free taints %v", got)
	}
}

// staleRules is a client whose DeviceTaintRule lists return rules, while
// rules is not nil, as an informer cache does until the watch events of
// the latest writes arrive.
type staleRules struct {
	client.Client
	rules *resourceapi.DeviceTaintRuleList
}

func (s *staleRules) List(ctx context.Context, list client.ObjectList, opts ...client.ListOption) error {
	if l, ok := list.(*resourceapi.DeviceTaintRuleList); ok && s.rules != nil {
		s.rules.DeepCopyInto(l)
		return nil
	}
	return s.Client.List(ctx, list, opts...)
}

// TestFreeTaintWithdrawalOutlastsAStaleCache: the reconciles right after a
// withdrawal of the free taints (each deleted rule's event triggers one)
// still list some of the deleted rules. While the claim waits, they write
// nothing: the withdrawal stands. (It was undone within 50 ms in the e2e
// matrix, every minute, so the claim never saw a free GPU untainted.) Once
// the claim goes, the free taints come back.
func TestFreeTaintWithdrawalOutlastsAStaleCache(t *testing.T) {
	for name, seen := range map[string]int{"no deletion seen yet": 0, "one of two deletions seen": 1} {
		t.Run(name, func(t *testing.T) {
			_, ctx := ktesting.NewTestContext(t)
			var writes int
			c := &staleRules{Client: ruleWrites(t, sharingFixture(), &writes)}
			now := time.Date(2026, 12, 6, 15, 39, 13, 0, time.UTC)
			r := &SharingReconciler{client: c, now: func() time.Time { return now }}
			reconcileOnce := func() {
				t.Helper()
				if _, err := r.Reconcile(ctx, reconcile.Request{}); err != nil {
					t.Fatal(err)
				}
			}
			reconcileOnce()
			var before resourceapi.DeviceTaintRuleList
			if err := c.List(ctx, &before); err != nil {
				t.Fatal(err)
			}
			if len(before.Items) != 2 {
				t.Fatalf("before the claim: %d free rules, want 2", len(before.Items))
			}
			legacy := waitingShare("free", "legacy")
			if err := c.Create(ctx, legacy); err != nil {
				t.Fatal(err)
			}
			reconcileOnce()
			if got := taints(ctx, t, c); len(got) != 0 {
				t.Fatalf("the waiting claim left free taints %v", got)
			}

			writes = 0
			before.Items = before.Items[seen:]
			c.rules = &before
			for range 5 {
				now = now.Add(10 * time.Millisecond)
				reconcileOnce()
			}
			c.rules = nil
			if got := taints(ctx, t, c); len(got) != 0 || writes != 0 {
				t.Fatalf("reconciles on a cache that lists %d deleted free rules put back taints %v (%d rule writes), want none", len(before.Items), got, writes)
			}
			// Caught up, the withdrawal stands while the claim waits.
			now = now.Add(time.Second)
			reconcileOnce()
			if got := taints(ctx, t, c); len(got) != 0 || writes != 0 {
				t.Fatalf("the waiting claim's free GPUs got taints %v (%d rule writes), want none", got, writes)
			}

			if err := c.Delete(ctx, legacy); err != nil {
				t.Fatal(err)
			}
			reconcileOnce()
			free := map[string]string{"gpu-0-shared": tenancyv1.GroupFree, "gpu-1-shared": tenancyv1.GroupFree}
			if diff := cmp.Diff(free, taints(ctx, t, c)); diff != "" {
				t.Errorf("after the claim (-want +got):\n%s", diff)
			}
		})
	}
}
