// Package v1alpha1 is the opaque device configuration of Tessera's DRA
// driver, group config.gpu.tessera.dev, version v1alpha1. Users and admins
// put these objects into the opaque config of a ResourceClaim or a
// DeviceClass; the kubelet plugin decodes them strictly (unknown fields are
// errors), validates them, and applies them when it prepares devices.
//
// +kubebuilder:object:generate=true
// +groupName=config.gpu.tessera.dev
package v1alpha1
