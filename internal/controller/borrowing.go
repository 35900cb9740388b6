package controller

import (
	"context"
	"errors"
	"fmt"
	"slices"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

// Marking borrowing claims with tenancy.tessera.dev/borrowed: a merge patch
// of that annotation alone.
//
// +kubebuilder:rbac:groups=resource.k8s.io,resources=resourceclaims,verbs=patch

// markBorrowing sets AnnotationBorrowed on t's admitted claims that borrow
// (tenancy.BorrowingClaims) and removes it from those that no longer do, so
// that users see which of their claims reclaim may take back. Only claims
// whose mark is wrong are patched, with a merge patch of the annotation
// alone: nothing else of the claim is written.
func (r *TenantReconciler) markBorrowing(ctx context.Context, t *tenancyv1.GPUTenant, admitted []*resourceapi.ResourceClaim, memory map[tenancy.DeviceID]int64) error {
	borrowing := tenancy.BorrowingClaims(t, admitted, memory)
	var errs []error
	for _, c := range admitted {
		want := borrowing[client.ObjectKeyFromObject(c)]
		if (c.Annotations[tenancyv1.AnnotationBorrowed] == "true") == want && (want || c.Annotations[tenancyv1.AnnotationBorrowed] == "") {
			continue
		}
		updated := c.DeepCopy()
		if want {
			if updated.Annotations == nil {
				updated.Annotations = map[string]string{}
			}
			updated.Annotations[tenancyv1.AnnotationBorrowed] = "true"
		} else {
			delete(updated.Annotations, tenancyv1.AnnotationBorrowed)
		}
		if err := r.client.Patch(ctx, updated, client.MergeFrom(c), client.FieldOwner(fieldManager)); err != nil {
			errs = append(errs, client.IgnoreNotFound(fmt.Errorf("mark claim %s borrowed=%t: %w", klog.KObj(c), want, err)))
			continue
		}
		klog.FromContext(ctx).V(4).Info("Marked claim", "claim", klog.KObj(c), "tenant", t.Name, "borrowed", want)
	}
	return errors.Join(errs...)
}

// guaranteeOverCommitment is tenancy.GuaranteeOverCommitment over every
// published ResourceSlice (the fleet), or "" without a single guarantee (no
// slice is read then). A change of any tenant's spec reconciles every tenant;
// a change of the fleet alone shows at each tenant's next reconcile.
func guaranteeOverCommitment(ctx context.Context, c client.Reader, tenants []*tenancyv1.GPUTenant) (string, error) {
	if !slices.ContainsFunc(tenants, func(t *tenancyv1.GPUTenant) bool { return t.Spec.Guarantee != nil }) {
		return "", nil
	}
	var list resourceapi.ResourceSliceList
	if err := c.List(ctx, &list); err != nil {
		return "", fmt.Errorf("list ResourceSlices for the fleet's capacity: %w", err)
	}
	return tenancy.GuaranteeOverCommitment(tenants, tenancy.FleetCapacity(tenancy.DeviceMemory(ptrs(list.Items)))), nil
}
