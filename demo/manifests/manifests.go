// Package manifests holds the demo workloads, written as users would write them.
// Tessera itself is installed from its Helm chart (deployments/helm/tessera).
package manifests

import (
	"embed"
	"io/fs"
	"slices"
)

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

// TenancyDemoTenants are the demo's GPUTenants; TenancyDemoWorkloads their
// namespaces and pods, applied once the tenants are enforced.
var (
	//go:embed tenancy-demo/00-tenants.yaml
	TenancyDemoTenants []byte
	//go:embed tenancy-demo/10-workloads.yaml
	TenancyDemoWorkloads []byte
)
