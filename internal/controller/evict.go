package controller

import (
	"context"
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/recorder"
)

// Evictions go through the Eviction API so that PodDisruptionBudgets hold.
//
// +kubebuilder:rbac:groups="",resources=pods/eviction,verbs=create

// evictClaimPods evicts every pod the claim is reserved for through the
// Eviction API (policy/v1), so that PodDisruptionBudgets and graceful
// termination apply as for a node drain, and records an Event on each pod
// (reason, and a message saying why) and on the claim. It is the one way
// Tessera takes GPUs back from a tenant: idle reclaim uses it, and so does
// reclaim of borrowed devices (reclaim.go). A pod already gone counts as evicted; an
// eviction refused (a budget's 429, any error) is returned, with the
// others, for the caller to try again later.
func evictClaimPods(ctx context.Context, c client.Client, rec recorder.EventRecorder, claim *resourceapi.ResourceClaim, reason, message string) error {
	logger := klog.FromContext(ctx)
	var errs []error
	for _, ref := range claim.Status.ReservedFor {
		if ref.Resource != "pods" || ref.APIGroup != "" {
			continue
		}
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: claim.Namespace, Name: ref.Name, UID: ref.UID}}
		// The UID precondition keeps a new pod of the same name (a
		// StatefulSet's) from being evicted for its predecessor's claim.
		eviction := &policyv1.Eviction{DeleteOptions: &metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &pod.UID}}}
		err := c.SubResource("eviction").Create(ctx, pod, eviction)
		switch {
		case apierrors.IsNotFound(err):
			continue
		case err != nil:
			errs = append(errs, fmt.Errorf("evict pod %s of claim %s: %w", klog.KObj(pod), klog.KObj(claim), err))
			continue
		}
		logger.Info("Evicted pod", "pod", klog.KObj(pod), "claim", klog.KObj(claim), "reason", reason)
		rec.Eventf(pod, claim, corev1.EventTypeWarning, reason, "Evict", "claim %s: %s", claim.Name, message)
	}
	if len(errs) == 0 {
		rec.Eventf(claim, nil, corev1.EventTypeWarning, reason, "Evict", "%s", message)
	}
	return errors.Join(errs...)
}
