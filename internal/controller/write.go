package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	admissionv1ac "k8s.io/client-go/applyconfigurations/admissionregistration/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	resourcev1ac "k8s.io/client-go/applyconfigurations/resource/v1"
	"k8s.io/client-go/util/csaupgrade"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
)

// The controller writes the objects it owns (policy bindings, quotas,
// dedicated classes, sharing taint rules) one way: server-side apply of
// their labels, owner and spec, with one field manager (fieldManager) that
// takes its fields back from whoever changed them (force), and one prune,
// by label selector, of those no longer desired. Fields other writers set
// (the API server's defaults, a taint's timeAdded) are theirs and stay.
// Both refuse, with an error, a kind they do not know.

// applyOwned server-side applies desired's labels and spec, and, when owner
// is not nil, owner as its controller (the garbage collector deletes it with
// its tenant).
func applyOwned(ctx context.Context, c client.Client, desired client.Object, owner *tenancyv1.GPUTenant) error {
	cfg, err := applyConfiguration(c.Scheme(), desired, owner)
	if err != nil {
		return fmt.Errorf("apply %T %s: %w", desired, klog.KObj(desired), err)
	}
	if err := takeOverUpdates(ctx, c, desired); err != nil {
		return fmt.Errorf("apply %T %s: %w", desired, klog.KObj(desired), err)
	}
	if err := c.Apply(ctx, cfg, client.FieldOwner(fieldManager), client.ForceOwnership); err != nil {
		return fmt.Errorf("apply %T %s: %w", desired, klog.KObj(desired), err)
	}
	return nil
}

// takeOverUpdates hands the fields of desired's object that fieldManager
// wrote by create or update (a controller from before it applied) to its
// apply entry, once: apply removes only the fields its own entry owned, so a
// field the desired object no longer has would otherwise stay for good. The
// object is read from the cache; one that does not exist yet needs nothing.
func takeOverUpdates(ctx context.Context, c client.Client, desired client.Object) error {
	obj, ok := desired.DeepCopyObject().(client.Object)
	if !ok {
		return fmt.Errorf("%T is not an object", desired)
	}
	if err := c.Get(ctx, client.ObjectKeyFromObject(desired), obj); err != nil {
		return client.IgnoreNotFound(err)
	}
	patch, err := csaupgrade.UpgradeManagedFieldsPatch(obj, sets.New(fieldManager), fieldManager)
	if err != nil || patch == nil {
		return err
	}
	return c.Patch(ctx, obj, client.RawPatch(types.JSONPatchType, patch))
}

// applyConfiguration is desired as the typed apply configuration of its kind:
// name, namespace, labels, owner and spec, nothing else.
func applyConfiguration(scheme *runtime.Scheme, desired client.Object, owner *tenancyv1.GPUTenant) (runtime.ApplyConfiguration, error) {
	var refs []*metav1ac.OwnerReferenceApplyConfiguration
	if owner != nil {
		// SetControllerReference finds the owner's kind in the scheme.
		obj, ok := desired.DeepCopyObject().(client.Object)
		if !ok {
			return nil, fmt.Errorf("%T is not an object", desired)
		}
		obj.SetOwnerReferences(nil)
		if err := controllerutil.SetControllerReference(owner, obj, scheme); err != nil {
			return nil, err
		}
		for _, ref := range obj.GetOwnerReferences() {
			refs = append(refs, metav1ac.OwnerReference().WithAPIVersion(ref.APIVersion).WithKind(ref.Kind).
				WithName(ref.Name).WithUID(ref.UID).WithController(*ref.Controller).WithBlockOwnerDeletion(*ref.BlockOwnerDeletion))
		}
	}
	labels := desired.GetLabels()
	switch o := desired.(type) {
	case *admissionv1.ValidatingAdmissionPolicyBinding:
		spec, err := convert[admissionv1ac.ValidatingAdmissionPolicyBindingSpecApplyConfiguration](o.Spec)
		if err != nil {
			return nil, err
		}
		return admissionv1ac.ValidatingAdmissionPolicyBinding(o.Name).WithLabels(labels).WithOwnerReferences(refs...).WithSpec(spec), nil
	case *admissionv1.MutatingAdmissionPolicyBinding:
		spec, err := convert[admissionv1ac.MutatingAdmissionPolicyBindingSpecApplyConfiguration](o.Spec)
		if err != nil {
			return nil, err
		}
		return admissionv1ac.MutatingAdmissionPolicyBinding(o.Name).WithLabels(labels).WithOwnerReferences(refs...).WithSpec(spec), nil
	case *corev1.ResourceQuota:
		spec, err := convert[corev1ac.ResourceQuotaSpecApplyConfiguration](o.Spec)
		if err != nil {
			return nil, err
		}
		return corev1ac.ResourceQuota(o.Name, o.Namespace).WithLabels(labels).WithOwnerReferences(refs...).WithSpec(spec), nil
	case *resourceapi.DeviceClass:
		spec, err := convert[resourcev1ac.DeviceClassSpecApplyConfiguration](o.Spec)
		if err != nil {
			return nil, err
		}
		return resourcev1ac.DeviceClass(o.Name).WithLabels(labels).WithOwnerReferences(refs...).WithSpec(spec), nil
	case *resourceapi.DeviceTaintRule:
		spec, err := convert[resourcev1ac.DeviceTaintRuleSpecApplyConfiguration](o.Spec)
		if err != nil {
			return nil, err
		}
		return resourcev1ac.DeviceTaintRule(o.Name).WithLabels(labels).WithOwnerReferences(refs...).WithSpec(spec), nil
	default:
		return nil, fmt.Errorf("the controller owns no objects of kind %T", desired)
	}
}

// convert is spec as its apply configuration: both have one JSON form, and
// the fields spec leaves empty stay out of it (omitempty), so they are not
// claimed.
func convert[T any](spec any) (*T, error) {
	data, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	out := new(T)
	if err := json.Unmarshal(data, out); err != nil {
		return nil, fmt.Errorf("spec %T as %T: %w", spec, out, err)
	}
	return out, nil
}

// prune deletes the objects of list's kind that carry selector's labels and
// that keep does not keep. A kind the controller does not own is an error,
// not a no-op.
func prune(ctx context.Context, c client.Client, list client.ObjectList, selector client.MatchingLabels, keep func(client.Object) bool) error {
	switch list.(type) {
	case *admissionv1.ValidatingAdmissionPolicyBindingList, *admissionv1.MutatingAdmissionPolicyBindingList,
		*corev1.ResourceQuotaList, *resourceapi.DeviceClassList, *resourceapi.DeviceTaintRuleList:
	default:
		return fmt.Errorf("prune: the controller owns no objects of kind %T", list)
	}
	if err := c.List(ctx, list, selector); err != nil {
		return fmt.Errorf("list %T %v: %w", list, selector, err)
	}
	items, err := meta.ExtractList(list)
	if err != nil {
		return fmt.Errorf("prune %T: %w", list, err)
	}
	var errs []error
	for _, item := range items {
		obj, ok := item.(client.Object)
		if !ok {
			return fmt.Errorf("prune: %T is not an object", item)
		}
		if keep(obj) {
			continue
		}
		if err := client.IgnoreNotFound(c.Delete(ctx, obj)); err != nil {
			errs = append(errs, fmt.Errorf("delete %T %s: %w", obj, klog.KObj(obj), err))
			continue
		}
		klog.FromContext(ctx).Info("Deleted object no longer desired", "kind", fmt.Sprintf("%T", obj), "object", klog.KObj(obj))
	}
	return errors.Join(errs...)
}

// keepKeys keeps the objects named in want.
func keepKeys(want map[types.NamespacedName]bool) func(client.Object) bool {
	return func(obj client.Object) bool { return want[client.ObjectKeyFromObject(obj)] }
}
