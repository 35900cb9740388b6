package tenancy

import (
	"fmt"

	resourceapi "k8s.io/api/resource/v1"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
)

// NodePool is the pool whose devices a node with these labels may serve:
// its LabelNodePool label, or gpuapi.PoolDefault without one.
func NodePool(labels map[string]string) string {
	if p := labels[tenancyv1.LabelNodePool]; p != "" {
		return p
	}
	return gpuapi.PoolDefault
}

// ClassPool is the pool that DeviceClass class serves: a tenant's dedicated
// pool for one of its dedicated classes, gpuapi.PoolDefault for every other
// class (the shipped ones select only the default pool).
func ClassPool(class string, tenants []*tenancyv1.GPUTenant) string {
	for _, t := range tenants {
		if t.Spec.DedicatedPool == "" {
			continue
		}
		for _, shipped := range gpuapi.Classes {
			if tenancyv1.DedicatedClassName(t.Name, shipped) == class {
				return t.Spec.DedicatedPool
			}
		}
	}
	return gpuapi.PoolDefault
}

// PoolMismatch says why claim's allocation may not be admitted, or "" if it
// may: each of its Tessera devices must be on a node (the pool of Tessera's
// slices is named after their node) that serves the pool of the class its
// request named. nodePools maps those nodes to NodePool of their labels; a
// node missing from it serves the default pool.
//
// The devices' pool attribute, which the class selectors match, is what the
// node publishes, and a compromised node can publish any: with another
// tenant's pool it would draw that tenant's pods, with the default pool
// those of everyone. The node's label is set by an admin, and the node
// cannot change it (LabelNodePool), so the binding check holds both to it.
func PoolMismatch(claim *resourceapi.ResourceClaim, tenants []*tenancyv1.GPUTenant, nodePools map[string]string) string {
	if claim.Status.Allocation == nil {
		return ""
	}
	for _, r := range claim.Status.Allocation.Devices.Results {
		if r.Driver != gpuapi.DriverName {
			continue
		}
		class := RequestClass(&claim.Spec, r.Request)
		want := ClassPool(class, tenants)
		got, ok := nodePools[r.Pool]
		if !ok {
			got = gpuapi.PoolDefault
		}
		switch {
		case got == want:
		case want == gpuapi.PoolDefault:
			// The node's pool is another tenant's: name neither.
			return fmt.Sprintf("request %s: device %s of node %s was allocated through class %s, which serves the default pool, but an admin dedicated the node to a pool (label %s)",
				r.Request, r.Device, r.Pool, class, tenancyv1.LabelNodePool)
		default:
			return fmt.Sprintf("request %s: device %s of node %s was allocated through class %s, which serves pool %s, but the node is not labelled %s=%s",
				r.Request, r.Device, r.Pool, class, want, tenancyv1.LabelNodePool, want)
		}
	}
	return ""
}
