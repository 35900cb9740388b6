package scheduling

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/pkg/inventory"
	"github.com/tessera-gpu/tessera/pkg/resourceslice"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

// sharingMode is how a tenantCluster places the shares of several tenants.
type sharingMode int

const (
	// anyTenant: no exclusivity, any share beside any other.
	anyTenant sharingMode = iota
	// exclusive: tenant-exclusive sharing as Tessera does it.
	exclusive
	// exclusiveSliceOrder: held GPUs tainted and each claim tolerating its
	// own tenant's taint, but no free taint and no own-GPUs-first
	// alternatives: the allocator takes the first GPU in the slices' order
	// that the tenant may use, its own or a free one.
	exclusiveSliceOrder
)

// tenantCluster runs the upstream allocator for the shares of several
// tenants. In mode exclusive it does what tenant-exclusive sharing does in a
// cluster: each tenant's claims are shaped as the sharing admission policy
// shapes them (tenancy.SharingRequests: own GPUs first, then free ones), and
// before every allocation each shared GPU carries the taint of the tenant
// that holds it, or the free taint, as the controller's DeviceTaintRules put
// it there (kube-scheduler folds the rules' taints into the devices it hands
// the allocator; here they are written into the slices directly).
type tenantCluster struct {
	*Cluster
	base       []*resourceapi.ResourceSlice
	sharedGPUs []tenancy.DeviceID
	group      map[types.UID]string
	mode       sharingMode
}

func newTenantCluster(t testing.TB, nodes int, mode sharingMode) *tenantCluster {
	t.Helper()
	gpus := h200Node(t, 8)
	var names []string
	var all []*resourceapi.ResourceSlice
	for i := range nodes {
		name := fmt.Sprintf("node-%03d", i)
		names = append(names, name)
		all = append(all, resourceslice.Objects(name, resourceslice.Build(name, inventory.Node{
			DriverVersion: "550.54.15", CUDADriverVersion: "12.4", GPUs: gpus,
		}, resourceslice.Options{Pool: gpuapi.PoolDefault}))...)
	}
	var published []resourceapi.ResourceSlice
	for _, s := range all {
		published = append(published, *s)
	}
	return &tenantCluster{Cluster: NewCluster(names, all), base: all, sharedGPUs: tenancy.SharedGPUs(published), group: map[types.UID]string{}, mode: mode}
}

// holders are the shares allocated now, with their tenants.
func (c *tenantCluster) holders() []tenancy.ShareHolder {
	var out []tenancy.ShareHolder
	for uid, claim := range c.Claims() {
		out = append(out, tenancy.ShareHolder{Group: c.group[uid], Devices: tenancy.SharedDevices(claim)})
	}
	return out
}

// share allocates a share for tenant and returns the GPU ("node/device") it
// went to, or "" when none fits.
func (c *tenantCluster) share(ctx context.Context, t testing.TB, tenant, memory string, compute int64) (types.UID, string) {
	t.Helper()
	claim := Share(memory, compute)
	switch c.mode {
	case exclusive:
		claim.Spec.Devices.Requests = tenancy.SharingRequests(tenant, claim.Spec.Devices.Requests)
		c.Slices = tainted(c.base, tenancy.TaintRules(c.sharedGPUs, tenancy.Holders(c.holders())))
	case exclusiveSliceOrder:
		claim.Spec.Devices.Requests[0].Exactly.Tolerations = []resourceapi.DeviceToleration{tenancy.Toleration(tenant)}
		c.Slices = tainted(c.base, tenancy.TaintRules(nil, tenancy.Holders(c.holders())))
	}
	result, err := c.Allocate(ctx, claim)
	if err != nil {
		t.Fatal(err)
	}
	if result == nil {
		return "", ""
	}
	c.group[claim.UID] = tenant
	r := result.Devices.Results[0]
	return claim.UID, r.Pool + "/" + r.Device
}

func (c *tenantCluster) free(uid types.UID) {
	c.Free(uid)
	delete(c.group, uid)
}

// gpusInUse is how many shared GPUs hold at least one share.
func (c *tenantCluster) gpusInUse() int {
	return len(tenancy.Holders(c.holders()))
}

// mixedGPUs is how many shared GPUs hold shares of two tenants.
func (c *tenantCluster) mixedGPUs() int {
	n := 0
	for _, groups := range tenancy.Holders(c.holders()) {
		if len(groups) > 1 {
			n++
		}
	}
	return n
}

// tainted returns slices with each rule's taint added to the device it
// selects; slices without such a device are shared, not copied.
func tainted(base []*resourceapi.ResourceSlice, rules []*resourceapi.DeviceTaintRule) []*resourceapi.ResourceSlice {
	out := slices.Clone(base)
	for i, s := range out {
		copied := false
		for _, rule := range rules {
			sel := rule.Spec.DeviceSelector
			if s.Spec.Driver != *sel.Driver || s.Spec.Pool.Name != *sel.Pool {
				continue
			}
			for j := range s.Spec.Devices {
				if s.Spec.Devices[j].Name != *sel.Device {
					continue
				}
				if !copied {
					s = s.DeepCopy()
					out[i], copied = s, true
				}
				s.Spec.Devices[j].Taints = append(s.Spec.Devices[j].Taints, rule.Spec.Taint)
			}
		}
	}
	return out
}

// TestTenantSharesPackOnTheirGPUs: with the taints, tolerations and
// alternatives of exclusive sharing, the upstream allocator puts a second
// tenant on a GPU of its own, puts each tenant's new shares on a GPU it
// already shares (with room) before any free one, wherever that GPU is in
// the slices' order, takes a free GPU only when its own are full, and opens
// a GPU to the other tenant once its last share has gone. Without
// exclusivity the second tenant's share lands on the first tenant's GPU: the
// taint is what keeps it off.
func TestTenantSharesPackOnTheirGPUs(t *testing.T) {
	ctx := context.Background()
	const node = "node-000/"
	// Five shares of 20 % compute fill a GPU.
	share := func(c *tenantCluster, tenant string) (types.UID, string) { return c.share(ctx, t, tenant, "16Gi", 20) }

	open := newTenantCluster(t, 1, anyTenant)
	share(open, "a")
	if _, gpu := share(open, "b"); gpu != node+"gpu-0-shared" {
		t.Fatalf("without exclusivity b's share went to %s, want a's gpu-0-shared", gpu)
	}

	// With taints alone (no free taint, no own-GPUs-first alternatives), a
	// free GPU earlier in the slices' order beats the tenant's own.
	order := newTenantCluster(t, 1, exclusiveSliceOrder)
	aFirst, _ := share(order, "a") // gpu-0
	share(order, "b")              // gpu-1
	order.free(aFirst)
	if _, gpu := share(order, "b"); gpu != node+"gpu-0-shared" {
		t.Fatalf("by taints alone b's share went to %s, want the free gpu-0-shared", gpu)
	}

	c := newTenantCluster(t, 1, exclusive)
	shares := map[string][]types.UID{}
	step := func(tenant, want string) {
		t.Helper()
		uid, gpu := share(c, tenant)
		if gpu != node+want {
			t.Fatalf("%s's share went to %q, want %s", tenant, gpu, want)
		}
		shares[tenant] = append(shares[tenant], uid)
		if m := c.mixedGPUs(); m != 0 {
			t.Fatalf("%d GPUs serve two tenants", m)
		}
	}
	step("a", "gpu-0-shared")
	step("b", "gpu-1-shared") // gpu-0 is a's
	for range 4 {
		step("a", "gpu-0-shared") // a's own GPU before the free gpu-2
	}
	step("b", "gpu-1-shared")
	step("a", "gpu-2-shared") // a's GPU is full; gpu-1 is b's: a free one
	for _, uid := range shares["a"][:5] {
		c.free(uid)
	}
	// gpu-0 is free again after a's last share there went, and it comes
	// first in the slices' order; b's next shares still go to gpu-1, which b
	// holds and which has room, until it is full.
	for range 3 {
		step("b", "gpu-1-shared")
	}
	// b's gpu-1 is full: the free gpu-0 is open to b.
	step("b", "gpu-0-shared")
	// a's remaining share on gpu-2 keeps a there, past the free gpu-3.
	step("a", "gpu-2-shared")
	if got := c.gpusInUse(); got != 3 {
		t.Errorf("%d GPUs in use, want 3", got)
	}
	// The last shares go: every GPU is free, and open to anyone.
	for _, tenant := range []string{"a", "b"} {
		for _, uid := range shares[tenant] {
			c.free(uid)
		}
	}
	for _, r := range tenancy.TaintRules(c.sharedGPUs, tenancy.Holders(c.holders())) {
		if r.Spec.Taint.Value != tenancyv1.GroupFree {
			t.Errorf("%s is tainted %q with no share on it", *r.Spec.DeviceSelector.Device, r.Spec.Taint.Value)
		}
	}
	step("c", "gpu-0-shared")
}

// BenchmarkTenantExclusivePacking measures what exclusivity costs in GPUs: a
// seeded random mix of shares (8 to 32 GiB, 10 to 30 % compute) of two
// tenants (60 % / 40 %) arrives and departs on four 8 x H200 nodes (32 GPUs,
// more than the workload needs), and the mean and peak number of shared GPUs
// in use are reported without exclusivity, with Tessera's exclusive sharing,
// and with exclusivity by taints alone (each tenant's shares in the slices'
// order, no own-GPUs-first), side by side.
//
//	go test -run '^$' -bench TenantExclusivePacking -benchtime 1x ./research/scheduling/
func BenchmarkTenantExclusivePacking(b *testing.B) {
	const (
		sequences = 8
		events    = 250
	)
	ctx := context.Background()
	memories := []string{"8Gi", "16Gi", "24Gi", "32Gi"}
	run := func(mode sharingMode, seed uint64) (mean, peak float64, unplaced int) {
		rng := rand.New(rand.NewPCG(seed, 12))
		c := newTenantCluster(b, 4, mode)
		var live []types.UID
		sum := 0
		for range events {
			if len(live) == 0 || rng.Float64() < 0.55 {
				tenant := "a"
				if rng.Float64() < 0.4 {
					tenant = "b"
				}
				uid, gpu := c.share(ctx, b, tenant, memories[rng.IntN(len(memories))], int64(10+10*rng.IntN(3)))
				if gpu == "" {
					unplaced++
				} else {
					live = append(live, uid)
				}
			} else {
				i := rng.IntN(len(live))
				c.free(live[i])
				live = slices.Delete(live, i, i+1)
			}
			n := c.gpusInUse()
			sum += n
			peak = max(peak, float64(n))
			if mode != anyTenant && c.mixedGPUs() != 0 {
				b.Fatal("a GPU serves two tenants")
			}
		}
		return float64(sum) / events, peak, unplaced
	}
	modes := []struct {
		mode sharingMode
		name string
	}{{anyTenant, "any"}, {exclusive, "exclusive"}, {exclusiveSliceOrder, "exclusive-slice-order"}}
	for b.Loop() {
		mean, peak := make([]float64, len(modes)), make([]float64, len(modes))
		unplaced := 0
		for seq := range sequences {
			for i, m := range modes {
				mn, pk, u := run(m.mode, uint64(seq))
				mean[i], peak[i], unplaced = mean[i]+mn, peak[i]+pk, unplaced+u
			}
		}
		if unplaced != 0 {
			b.Fatalf("%d shares found no GPU: the cluster is too small to measure GPUs needed", unplaced)
		}
		for i, m := range modes {
			b.ReportMetric(mean[i]/sequences, "gpus-mean-"+m.name)
			b.ReportMetric(peak[i]/sequences, "gpus-peak-"+m.name)
		}
		b.ReportMetric(mean[1]/mean[0], "mean-ratio")
		b.ReportMetric(peak[1]/peak[0], "peak-ratio")
	}
}
