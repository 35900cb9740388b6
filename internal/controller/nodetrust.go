package controller

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

// Read only: a node's pool label says which pool its devices serve; the
// controller caches nodes' metadata.
//
// +kubebuilder:rbac:groups="",resources=nodes,verbs=get;list;watch

// checkPools turns an admitting decision into a refusal when one of the
// claim's devices is on a node that an admin did not label for the pool
// its class serves (tenancy.PoolMismatch): the pool attribute that drew the
// scheduler there is the node's own word, the label the admin's. Nodes are
// read as metadata only: the cache keeps no node's status or spec.
func checkPools(ctx context.Context, c client.Reader, claim *resourceapi.ResourceClaim, d tenancy.Decision) (tenancy.Decision, error) {
	if !d.Admit {
		return d, nil
	}
	pools := map[string]string{}
	for _, r := range claim.Status.Allocation.Devices.Results {
		if r.Driver != gpuapi.DriverName {
			continue
		}
		if _, ok := pools[r.Pool]; ok {
			continue
		}
		node := &metav1.PartialObjectMetadata{}
		node.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Node"))
		switch err := c.Get(ctx, types.NamespacedName{Name: r.Pool}, node); {
		case apierrors.IsNotFound(err):
			// A pool of no node (slices an admin published) serves the
			// default pool.
			pools[r.Pool] = gpuapi.PoolDefault
		case err != nil:
			return d, fmt.Errorf("get node %s of claim %s/%s: %w", r.Pool, claim.Namespace, claim.Name, err)
		default:
			pools[r.Pool] = tenancy.NodePool(node.Labels)
		}
	}
	tenants, err := listTenants(ctx, c)
	if err != nil {
		return d, err
	}
	if why := tenancy.PoolMismatch(claim, tenants, pools); why != "" {
		return tenancy.Decision{Reason: tenancyv1.ReasonPoolMismatch, Message: why}, nil
	}
	return d, nil
}
