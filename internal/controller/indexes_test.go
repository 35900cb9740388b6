package controller

import (
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
)

// withIndexes gives a fake client the cache's indexes (addIndexes).
func withIndexes(b *fake.ClientBuilder) *fake.ClientBuilder {
	return b.
		WithIndex(&resourceapi.ResourceSlice{}, indexSlicePool, slicePoolKeys).
		WithIndex(&resourceapi.ResourceClaim{}, indexClaimDevice, claimDeviceKeys).
		WithIndex(&resourceapi.ResourceClaim{}, indexClaimAdmitted, claimAdmittedKeys).
		WithIndex(&corev1.Namespace{}, indexNamespaceLabel, namespaceLabelKeys)
}
