package tenancy_test

import (
	"strings"
	"testing"

	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

// TestPoolMismatch: a device is admitted only on a node whose admin-set
// label serves the pool of the class that selected it, whatever pool
// attribute the node published: a node that claims a tenant's dedicated
// pool does not get the tenant's pods, and a dedicated node that claims the
// default pool does not get everyone's.
func TestPoolMismatch(t *testing.T) {
	tenants := []*tenancyv1.GPUTenant{
		{ObjectMeta: metav1.ObjectMeta{Name: "team-a"}, Spec: tenancyv1.GPUTenantSpec{DedicatedPool: "pool-a"}},
		{ObjectMeta: metav1.ObjectMeta{Name: "team-b"}},
	}
	dedicated := tenancyv1.DedicatedClassName("team-a", gpuapi.ClassMIG)
	// The plugin names each node's pool after the node.
	claim := func(class, node string) *resourceapi.ResourceClaim {
		c := makeClaim("ns", "c").Request("gpu", class).Allocated("gpu", "gpu-0-mig-1g18gb-0").Obj()
		c.Status.Allocation.Devices.Results[0].Pool = node
		return c
	}
	nodes := map[string]string{"plain": gpuapi.PoolDefault, "dedicated": "pool-a", "other": "pool-b"}
	for name, tc := range map[string]struct {
		class, node string
		want        string // a part of the message; "" to admit
	}{
		"shipped class on a plain node":          {gpuapi.ClassMIG, "plain", ""},
		"dedicated class on its labelled node":   {dedicated, "dedicated", ""},
		"shipped class on a node of no Node":     {gpuapi.ClassMIG, "gone", ""},
		"dedicated class on a plain node":        {dedicated, "plain", "is not labelled " + tenancyv1.LabelNodePool + "=pool-a"},
		"dedicated class on another pool's node": {dedicated, "other", "is not labelled"},
		"dedicated class on a node of no Node":   {dedicated, "gone", "is not labelled"},
		"shipped class on a dedicated node":      {gpuapi.ClassMIG, "dedicated", "an admin dedicated the node to a pool"},
		"an admin's class on a dedicated node":   {"custom.example.com", "dedicated", "an admin dedicated the node to a pool"},
	} {
		t.Run(name, func(t *testing.T) {
			got := tenancy.PoolMismatch(claim(tc.class, tc.node), tenants, nodes)
			switch {
			case tc.want == "" && got != "":
				t.Errorf("refused: %s", got)
			case tc.want != "" && !strings.Contains(got, tc.want):
				t.Errorf("got %q, want it to say %q", got, tc.want)
			}
			if tc.node == "dedicated" && tc.class != dedicated && strings.Contains(got, "pool-a") {
				t.Errorf("the refusal %q names the dedicated pool", got)
			}
		})
	}
	t.Run("another driver's device", func(t *testing.T) {
		c := makeClaim("ns", "c").Request("gpu", dedicated).Foreign("gpu", "gpu.nvidia.com", "gpu-0").Obj()
		if got := tenancy.PoolMismatch(c, tenants, nodes); got != "" {
			t.Errorf("refused: %s", got)
		}
	})
}

func TestNodePool(t *testing.T) {
	for labels, want := range map[string]string{"": gpuapi.PoolDefault, "pool-a": "pool-a"} {
		got := tenancy.NodePool(map[string]string{tenancyv1.LabelNodePool: labels, "tenancy.tessera.dev/pool": "forged"})
		if got != want {
			t.Errorf("NodePool(%q) = %q, want %q", labels, got, want)
		}
	}
}
