// Package v1alpha1 is the tenancy API of Tessera, group tenancy.tessera.dev:
// the GPUTenant type and the names tenancy puts on devices, claims and
// namespaces (binding conditions, labels, taints). The CRD is generated from
// these types into the Helm chart (make generate).
//
// +kubebuilder:object:generate=true
// +groupName=tenancy.tessera.dev
package v1alpha1
