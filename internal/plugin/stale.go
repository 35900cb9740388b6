package plugin

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/klog/v2"
)

// CheckpointedClaims lists the claims a preparer holds devices for, as its
// checkpoint on disk says (see prepare.Preparer.CheckpointedClaims), and
// tears one down.
type CheckpointedClaims interface {
	CheckpointedClaims(ctx context.Context) ([]kubeletplugin.NamespacedObject, error)
	Unprepare(ctx context.Context, claim kubeletplugin.NamespacedObject) error
}

// staleCallTimeout bounds one round of the stale-entry check.
const staleCallTimeout = time.Minute

// CleanStaleClaims unprepares the checkpointed claims that are stale: their
// claim no longer exists (or exists under another UID, so it is another
// claim) AND no pod on the node that has not terminated refers to it. The
// kubelet unprepares a claim when its pod ends; an entry it never
// unprepared (the plugin was down, or the kubelet gave up) would otherwise
// hold its devices, and withdraw what they block, forever. A deleted claim
// whose pod still runs (a claim deleted under a running pod: its finalizer
// removed by force) keeps its devices: the pod's containers still use them.
// It returns the claims it unprepared; an error of one claim does not stop
// the others.
func CleanStaleClaims(ctx context.Context, client kubernetes.Interface, nodeName string, claims CheckpointedClaims) ([]kubeletplugin.NamespacedObject, error) {
	entries, err := claims.CheckpointedClaims(ctx)
	if err != nil || len(entries) == 0 {
		return nil, err
	}
	var gone []kubeletplugin.NamespacedObject
	for _, e := range entries {
		c, err := client.ResourceV1().ResourceClaims(e.Namespace).Get(ctx, e.Name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
		case err != nil:
			return nil, fmt.Errorf("get claim %s: %w", e.NamespacedName, err)
		case c.UID != e.UID:
		default:
			continue
		}
		gone = append(gone, e)
	}
	if len(gone) == 0 {
		return nil, nil
	}
	// A pod refers to its claims by name from its creation on, so a pod
	// that still uses a claim read as gone is in this list.
	selector := fields.OneTermEqualSelector("spec.nodeName", nodeName).String()
	pods, err := client.CoreV1().Pods(metav1.NamespaceAll).List(ctx, metav1.ListOptions{FieldSelector: selector})
	if err != nil {
		return nil, fmt.Errorf("list the pods of node %s: %w", nodeName, err)
	}
	used := map[types.NamespacedName]string{}
	for _, pod := range pods.Items {
		if pod.Spec.NodeName != nodeName || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
			continue // a fake client ignores field selectors
		}
		for _, name := range podClaimNames(&pod) {
			used[types.NamespacedName{Namespace: pod.Namespace, Name: name}] = pod.Name
		}
	}
	logger := klog.FromContext(ctx)
	var cleaned []kubeletplugin.NamespacedObject
	var errs []error
	for _, e := range gone {
		if pod, ok := used[e.NamespacedName]; ok {
			logger.V(2).Info("Claim is gone but a pod on the node still uses it; keeping its devices", "claim", e.NamespacedName, "uid", e.UID, "pod", pod)
			continue
		}
		logger.Info("Unpreparing a stale checkpoint entry: its claim is gone and no pod on the node uses it", "claim", e.NamespacedName, "uid", e.UID)
		if err := claims.Unprepare(ctx, e); err != nil {
			errs = append(errs, err)
			continue
		}
		cleaned = append(cleaned, e)
	}
	return cleaned, errors.Join(errs...)
}

// podClaimNames are the names of the claims a pod refers to: its own
// (spec) and those generated from templates for it (status).
func podClaimNames(pod *corev1.Pod) []string {
	var out []string
	for _, rc := range pod.Spec.ResourceClaims {
		if rc.ResourceClaimName != nil {
			out = append(out, *rc.ResourceClaimName)
		}
	}
	for _, st := range pod.Status.ResourceClaimStatuses {
		if st.ResourceClaimName != nil {
			out = append(out, *st.ResourceClaimName)
		}
	}
	return out
}

// watchStaleClaims runs CleanStaleClaims every interval until ctx ends.
func watchStaleClaims(ctx context.Context, client kubernetes.Interface, nodeName string, claims CheckpointedClaims, interval time.Duration) error {
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
		roundCtx, cancel := context.WithTimeout(ctx, staleCallTimeout)
		if _, err := CleanStaleClaims(roundCtx, client, nodeName, claims); err != nil && ctx.Err() == nil {
			klog.FromContext(ctx).Error(err, "Cleaning up stale checkpoint entries failed; trying again later")
		}
		cancel()
	}
}
