package scheduling

import (
	"fmt"
	"strings"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/dynamic-resource-allocation/structured"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/pkg/inventory"
)

// ClaimKind is a kind of claim whose scheduling cost is measured.
type ClaimKind string

// The claim kinds measured.
const (
	KindWhole ClaimKind = "whole"
	// KindMIG1g and KindMIG3g ask for one partition of 1g.18gb and 3g.71gb.
	KindMIG1g ClaimKind = "mig-1g"
	KindMIG3g ClaimKind = "mig-3g"
	// KindShare asks for 20Gi and 30 % of a time-shared GPU.
	KindShare ClaimKind = "share"
	// KindFirstAvailable asks for a 1g.18gb partition, else a whole GPU.
	KindFirstAvailable ClaimKind = "first-available"
)

// ClaimKinds lists the kinds in a stable order.
var ClaimKinds = []ClaimKind{KindWhole, KindMIG1g, KindMIG3g, KindShare, KindFirstAvailable}

var kindProfile = map[ClaimKind]string{KindMIG1g: "1g.18gb", KindMIG3g: "3g.71gb", KindFirstAvailable: "1g.18gb"}

// Requests returns the device requests of a claim of the kind in the layout,
// with the API server's defaults applied, or nil when the layout cannot
// express the kind.
func (l Layout) Requests(kind ClaimKind) []resourceapi.DeviceRequest {
	var reqs []resourceapi.DeviceRequest
	switch kind {
	case KindWhole:
		reqs = []resourceapi.DeviceRequest{{Name: "gpu", Exactly: &resourceapi.ExactDeviceRequest{DeviceClassName: l.WholeClass}}}
	case KindMIG1g, KindMIG3g:
		if l.MIGClass == "" {
			return nil
		}
		class, sel := l.MIGRequest(kindProfile[kind])
		reqs = []resourceapi.DeviceRequest{{Name: "mig", Exactly: &resourceapi.ExactDeviceRequest{DeviceClassName: class, Selectors: sel}}}
	case KindShare:
		if l.SharedClass == "" {
			return nil
		}
		reqs = []resourceapi.DeviceRequest{{Name: "share", Exactly: &resourceapi.ExactDeviceRequest{
			DeviceClassName: l.SharedClass, Capacity: shareCapacity("20Gi", 30),
		}}}
	case KindFirstAvailable:
		if l.MIGClass == "" {
			return nil
		}
		class, sel := l.MIGRequest(kindProfile[kind])
		reqs = []resourceapi.DeviceRequest{{Name: "gpu", FirstAvailable: []resourceapi.DeviceSubRequest{
			{Name: "mig", DeviceClassName: class, Selectors: sel},
			{Name: "whole", DeviceClassName: l.WholeClass},
		}}}
	default:
		panic(fmt.Sprintf("unknown claim kind %q", kind))
	}
	for i := range reqs {
		if r := reqs[i].Exactly; r != nil {
			r.AllocationMode, r.Count = resourceapi.DeviceAllocationModeExactCount, 1
		}
		for j := range reqs[i].FirstAvailable {
			r := &reqs[i].FirstAvailable[j]
			r.AllocationMode, r.Count = resourceapi.DeviceAllocationModeExactCount, 1
		}
	}
	return reqs
}

// MIGRequest returns the class and selectors of a request for one partition
// of the profile: the layout's per-profile class where it has one, else its
// MIG class with a selector on the profile attribute.
func (l Layout) MIGRequest(profile string) (string, []resourceapi.DeviceSelector) {
	if l.MIGProfileClass != nil {
		return l.MIGProfileClass(profile), nil
	}
	return l.MIGClass, []resourceapi.DeviceSelector{{CEL: &resourceapi.CELDeviceSelector{
		Expression: fmt.Sprintf(`device.attributes[%q].profile == %q`, l.Driver, profile),
	}}}
}

// Claim returns a claim of the kind in the layout, or nil.
func (l Layout) Claim(kind ClaimKind) *resourceapi.ResourceClaim {
	reqs := l.Requests(kind)
	if reqs == nil {
		return nil
	}
	return newClaim(reqs...)
}

// GPURole is what a GPU of a node is used for in a fill.
type GPURole int

// Roles of a GPU.
const (
	RoleFree GPURole = iota
	RoleWhole
	// RolePartitioned holds 2g.35gb at 0, 1g.18gb at 2 and 3g.71gb at 4,
	// leaving memory slice 3 free.
	RolePartitioned
	// RoleShared holds two shares, 20Gi / 30 % and 30Gi / 30 %.
	RoleShared
)

// Fill returns the roles of a node's eight GPUs at a fill level in per cent
// of GPUs in use: a realistic mix of whole, partitioned and shared GPUs.
func Fill(percent int) []GPURole {
	switch percent {
	case 0:
		return make([]GPURole, 8)
	case 50:
		return []GPURole{RoleWhole, RoleWhole, RolePartitioned, RoleShared, RoleFree, RoleFree, RoleFree, RoleFree}
	case 90:
		return []GPURole{RoleWhole, RoleWhole, RoleWhole, RolePartitioned, RolePartitioned, RoleShared, RoleShared, RoleFree}
	}
	panic(fmt.Sprintf("no fill of %d %%", percent))
}

var partitionedDevices = []struct {
	profile string
	start   int
}{{"2g.35gb", 0}, {"1g.18gb", 2}, {"3g.71gb", 4}}

// Occupy records, in every node's pool, the allocations of a fill as the
// scheduler tracks them: partitioned GPUs become whole ones where the layout
// has no partitions, shared ones whole where it has no shares.
func (c *Cluster) Occupy(l Layout, inv inventory.Node, roles []GPURole) {
	for _, node := range c.Nodes {
		for gpu, role := range roles {
			whole := structured.MakeDeviceID(l.Driver, node.Name, l.Whole(gpu))
			switch {
			case role == RoleFree:
			case role == RolePartitioned && l.MIGClass != "":
				for _, d := range partitionedDevices {
					p := profileByName(inv.GPUs[gpu], d.profile)
					c.state.AllocatedDevices.Insert(structured.MakeDeviceID(l.Driver, node.Name, l.MIG(gpu, p, d.start)))
				}
			case role == RoleShared && l.SharedClass != "":
				id := structured.MakeDeviceID(l.Driver, node.Name, l.Shared(gpu))
				for i, share := range []struct{ memory, compute string }{{"20Gi", "30"}, {"30Gi", "30"}} {
					uid := types.UID(fmt.Sprintf("%s-%d-share-%d", node.Name, gpu, i))
					c.state.AllocatedSharedDeviceIDs.Insert(structured.MakeSharedDeviceID(id, &uid))
					c.state.AggregatedCapacity.Insert(structured.NewDeviceConsumedCapacity(id, map[resourceapi.QualifiedName]resource.Quantity{
						gpuapi.CapMemory:  resource.MustParse(share.memory),
						gpuapi.CapCompute: resource.MustParse(share.compute),
					}))
				}
			default:
				c.state.AllocatedDevices.Insert(whole)
			}
		}
	}
}

func profileByName(g inventory.GPU, name string) inventory.MIGProfile {
	for _, p := range g.MIG.Profiles {
		if p.Name == name {
			return p
		}
	}
	panic(fmt.Sprintf("GPU %d has no MIG profile %s", g.Index, name))
}

// NewLayoutCluster publishes the inventory on n nodes in the layout. Every
// node publishes the same devices, so the layout is built once and copied
// to each node under its own names (slice names start with the node's).
func NewLayoutCluster(l Layout, inv inventory.Node, n int) *Cluster {
	const template = "node-000"
	first := l.Slices(template, inv)
	var names []string
	var slices []*resourceapi.ResourceSlice
	for i := range n {
		name := fmt.Sprintf("node-%03d", i)
		names = append(names, name)
		for _, s := range first {
			s = s.DeepCopy()
			s.Name = name + strings.TrimPrefix(s.Name, template)
			s.Spec.Pool.Name = name
			s.Spec.NodeName = &name
			slices = append(slices, s)
		}
	}
	return NewCluster(names, slices)
}
