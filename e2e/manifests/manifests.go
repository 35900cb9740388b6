// Package manifests holds the objects the local cluster installs: Tessera's
// DeviceClasses (until the Helm chart renders them) and the demo workloads, written
// as users would write them.
package manifests

import (
	"embed"
	"io/fs"
	"slices"
)

// DeviceClasses is the YAML of the DeviceClasses Tessera ships.
//
//go:embed deviceclasses.yaml
var DeviceClasses []byte

// PluginRBAC is the kubelet plugin's ServiceAccount and its RBAC, which the
// local cluster runs every plugin with.
//
//go:embed plugin-rbac.yaml
var PluginRBAC []byte

// PluginServiceAccount names the ServiceAccount in PluginRBAC as namespace, name.
var PluginServiceAccount = [2]string{"tessera-system", "tessera-kubelet-plugin"}

//go:embed demo/*.yaml
var demo embed.FS

// DemoNamespace is where the demo workloads live.
const DemoNamespace = "tessera-demo"

// Demo returns the demo manifests, in apply order (by file name).
func Demo() ([][]byte, error) {
	names, err := fs.Glob(demo, "demo/*.yaml")
	if err != nil {
		return nil, err
	}
	slices.Sort(names)
	var out [][]byte
	for _, n := range names {
		data, err := demo.ReadFile(n)
		if err != nil {
			return nil, err
		}
		out = append(out, data)
	}
	return out, nil
}

// TenancyPolicies are tenancy's ValidatingAdmissionPolicies and their static
// bindings.
//
//go:embed tenancy-policies.yaml
var TenancyPolicies []byte

// ControllerRBAC is the tenancy controller's ServiceAccount and its RBAC.
//
//go:embed controller-rbac.yaml
var ControllerRBAC []byte

// ControllerServiceAccount names the ServiceAccount in ControllerRBAC as
// namespace, name.
var ControllerServiceAccount = [2]string{"tessera-system", "tessera-controller"}

// TenancyDemoTenants are the demo's GPUTenants; TenancyDemoWorkloads their
// namespaces and pods, applied once the tenants are enforced.
var (
	//go:embed tenancy-demo/00-tenants.yaml
	TenancyDemoTenants []byte
	//go:embed tenancy-demo/10-workloads.yaml
	TenancyDemoWorkloads []byte
)

// SharingPolicies are the MutatingAdmissionPolicies of tenant-exclusive
// time-sharing, which give each tenant's claims the toleration of its own
// GPUs' taint, and the static binding of the tenants' one.
//
//go:embed sharing-policies.yaml
var SharingPolicies []byte

// SharingRBAC is what the controller needs on top of ControllerRBAC to keep
// the sharing taints and the untenanted sharing binding.
//
//go:embed sharing-rbac.yaml
var SharingRBAC []byte
