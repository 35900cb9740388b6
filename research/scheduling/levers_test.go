package scheduling

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/internal/testing/builder"
	"github.com/tessera-gpu/tessera/pkg/inventory"
	"github.com/tessera-gpu/tessera/pkg/partition"
	"github.com/tessera-gpu/tessera/pkg/resourceslice"
)

// Levers on Tessera's layout, each a variant measured side by side with the
// layout as published. A variant rewrites the published slices or the
// classes claims use; none changes what the plugin publishes.

// gpuMajor is the MIG order Tessera published before: each GPU's partitions
// together, GPU by GPU.
func gpuMajor(l Layout) Layout {
	return rewrite(l, "gpu-major", func(devices []resourceapi.Device) []resourceapi.Device {
		slices.SortStableFunc(devices, func(a, b resourceapi.Device) int {
			ka, kb := *a.Attributes[gpuapi.AttrType].StringValue, *b.Attributes[gpuapi.AttrType].StringValue
			if (ka == gpuapi.TypeMIG) != (kb == gpuapi.TypeMIG) {
				if ka == gpuapi.TypeMIG {
					return 1
				}
				return -1
			}
			if ka != gpuapi.TypeMIG {
				return 0
			}
			return int(*a.Attributes[gpuapi.AttrIndex].IntValue - *b.Attributes[gpuapi.AttrIndex].IntValue)
		})
		return devices
	})
}

// leanAttributes drops from MIG and shared devices every attribute that is
// the same for all devices of a GPU or node and that users rarely select on
// a partition or share by: the three versions, brand, architecture, minor,
// placementSize and the PCI attributes.
func leanAttributes(l Layout) Layout {
	drop := []resourceapi.QualifiedName{gpuapi.AttrCUDAComputeCapability, gpuapi.AttrDriverVersion, gpuapi.AttrCUDADriverVersion,
		gpuapi.AttrBrand, gpuapi.AttrArchitecture, gpuapi.AttrMinor, gpuapi.AttrPlacementSize,
		"resource.kubernetes.io/pciBusID", "resource.kubernetes.io/pcieRoot"}
	return rewrite(l, "lean-attributes", func(devices []resourceapi.Device) []resourceapi.Device {
		for i, d := range devices {
			if *d.Attributes[gpuapi.AttrType].StringValue == gpuapi.TypeGPU {
				continue
			}
			attrs := map[resourceapi.QualifiedName]resourceapi.DeviceAttribute{}
			for k, v := range d.Attributes {
				if !slices.Contains(drop, k) {
					attrs[k] = v
				}
			}
			devices[i].Attributes = attrs
		}
		return devices
	})
}

// profileClasses asks for MIG partitions through a DeviceClass per profile,
// whose one selector names the type and the profile, with no request
// selector.
func profileClasses(l Layout) Layout {
	l.Name += "/profile-classes"
	l.MIGProfileClass = func(profile string) string { return testProfileClass(profile) }
	return l
}

func testProfileClass(profile string) string {
	return gpuapi.ProfileLabel(profile) + ".bench.mig.gpu.tessera.dev"
}

var h200Profiles = []string{"1g.18gb", "1g.18gb+me", "1g.35gb", "2g.35gb", "3g.71gb", "4g.71gb", "7g.141gb"}

func init() {
	for _, p := range h200Profiles {
		allocatorClasses[testProfileClass(p)] = &resourceapi.DeviceClass{
			ObjectMeta: metav1.ObjectMeta{Name: testProfileClass(p)},
			Spec: resourceapi.DeviceClassSpec{Selectors: []resourceapi.DeviceSelector{{CEL: &resourceapi.CELDeviceSelector{
				Expression: fmt.Sprintf(`device.driver == %q && device.attributes[%q].type == "mig" && device.attributes[%q].profile == %q`,
					gpuapi.DriverName, gpuapi.DriverName, gpuapi.DriverName, p),
			}}}},
		}
	}
}

// withdrawn publishes what resourceslice.Options.WithdrawBlocked publishes
// with the fill's devices prepared: a GPU in use whole or shared offers no
// partitions and not the other form; a partitioned GPU offers neither whole
// nor shared and none of the placements its partitions block.
func withdrawn(l Layout, inv inventory.Node, roles []GPURole) Layout {
	prepared := fillPrepared(l, inv, roles)
	l.Name += "/withdrawn"
	l.Slices = func(node string, inv inventory.Node) []*resourceapi.ResourceSlice {
		return resourceslice.Objects(node, resourceslice.Build(node, inv, resourceslice.Options{
			Pool: "default", Prepared: prepared, WithdrawBlocked: true,
		}))
	}
	return l
}

// fillPrepared names the devices a fill has allocated, as if all were
// prepared.
func fillPrepared(l Layout, inv inventory.Node, roles []GPURole) map[string]bool {
	prepared := map[string]bool{}
	for gpu, role := range roles {
		switch role {
		case RoleWhole:
			prepared[l.Whole(gpu)] = true
		case RoleShared:
			prepared[l.Shared(gpu)] = true
		case RolePartitioned:
			for _, d := range partitionedDevices {
				prepared[l.MIG(gpu, profileByName(inv.GPUs[gpu], d.profile), d.start)] = true
			}
		}
	}
	return prepared
}

// rewrite applies f to the devices of each node, in publication order, and
// republishes them in slices of at most 64.
func rewrite(l Layout, name string, f func([]resourceapi.Device) []resourceapi.Device) Layout {
	base := l.Slices
	l.Name += "/" + name
	l.Slices = func(node string, inv inventory.Node) []*resourceapi.ResourceSlice {
		var out []*resourceapi.ResourceSlice
		var devices []resourceapi.Device
		for _, s := range base(node, inv) {
			if len(s.Spec.Devices) == 0 {
				out = append(out, s)
				continue
			}
			for _, d := range s.Spec.Devices {
				devices = append(devices, *d.DeepCopy())
			}
		}
		devices = f(devices)
		for start := 0; start < len(devices); start += resourceapi.ResourceSliceMaxDevicesWithAdvancedFeatures {
			end := min(start+resourceapi.ResourceSliceMaxDevicesWithAdvancedFeatures, len(devices))
			out = append(out, builder.MakeSlice(fmt.Sprintf("%s-%s-%d", node, strings.ReplaceAll(name, "/", "-"), len(out)), node).
				Driver(l.Driver).Device(devices[start:end]...).Obj())
		}
		for _, s := range out {
			s.Spec.Pool.ResourceSliceCount = int64(len(out))
		}
		return out
	}
	return l
}

// perGPUSlices publishes every device (nothing withdrawn) in the layout
// withdrawal uses: each GPU's devices in a slice of their own, whole, shared,
// then its partitions in packing order.
func perGPUSlices(l Layout) Layout {
	l.Name += "/per-gpu-slices"
	l.Slices = func(node string, inv inventory.Node) []*resourceapi.ResourceSlice {
		return resourceslice.Objects(node, resourceslice.Build(node, inv, resourceslice.Options{Pool: "default", WithdrawBlocked: true}))
	}
	return l
}

// packedWithdrawn is withdrawal as it was published before: what is left
// packed into slices of 64, whole and shared GPUs first, then the partitions
// profile-major (so one prepare can change every device slice).
func packedWithdrawn(l Layout) Layout {
	return rewrite(l, "packed", func(devices []resourceapi.Device) []resourceapi.Device {
		profiles := map[string]int{}
		key := func(d resourceapi.Device) int {
			if *d.Attributes[gpuapi.AttrType].StringValue != gpuapi.TypeMIG {
				return -1
			}
			p := *d.Attributes[gpuapi.AttrProfile].StringValue
			if _, ok := profiles[p]; !ok {
				profiles[p] = len(profiles)
			}
			return profiles[p]
		}
		for _, d := range devices {
			key(d)
		}
		slices.SortStableFunc(devices, func(a, b resourceapi.Device) int { return key(a) - key(b) })
		return devices
	})
}

// noShares is a diagnostic, not a lever: the same published devices, with
// the fill's time-shared GPUs allocated whole instead of holding shares, so
// that no share is allocated anywhere in the cluster. Against Tessera's
// layout it isolates what the allocated shares cost: the allocator's
// "is this device allocated" check walks every allocated share in the
// cluster (see docs/benchmarks.md).
func noShares(l Layout) Layout {
	l.Name += "/no-shares"
	l.SharedClass = ""
	return l
}

// plainCounters is a diagnostic, not a lever: Plain's eight devices, each
// consuming its GPU's counter set as Tessera's whole device does (every
// memory slice and MIG instance counter, pkg/partition). Against Plain it
// isolates what counters cost the allocator on a whole-GPU claim, whatever
// else a layout publishes: the allocator builds the pool's available
// counters on every node (all counter sets), and checks every counter of the
// pool for each device it tries to take.
func plainCounters(l Layout) Layout {
	base := l.Slices
	l.Name += "/counters"
	l.Slices = func(node string, inv inventory.Node) []*resourceapi.ResourceSlice {
		var sets []resourceapi.CounterSet
		devices := base(node, inv)[0].Spec.Devices
		for i, gpu := range inv.GPUs {
			g := partition.Build(gpu, partition.Options{})
			counters := map[string]resourceapi.Counter{}
			for name, n := range g.Counters {
				counters[name] = resourceapi.Counter{Value: *resource.NewQuantity(n, resource.DecimalSI)}
			}
			sets = append(sets, resourceapi.CounterSet{Name: g.CounterSet, Counters: counters})
			devices[i].ConsumesCounters = []resourceapi.DeviceCounterConsumption{{CounterSet: g.CounterSet, Counters: counters}}
		}
		return []*resourceapi.ResourceSlice{
			builder.MakeSlice(node+"-counters", node).Pool(node, 0, 2).Counters(sets...).Obj(),
			builder.MakeSlice(node+"-plain", node).Pool(node, 0, 2).Device(devices...).Obj(),
		}
	}
	return l
}

// BenchmarkSchedulerLevers measures each lever on Tessera's layout at 90 %
// fill, side by side with the layout as published and the other layouts, on
// 100 and 500 nodes (to see which levers remove what grows with nodes).
//
//	go test -run '^$' -bench SchedulerLevers -benchtime 2x ./research/scheduling/
func BenchmarkSchedulerLevers(b *testing.B) {
	inv := benchInventory(b)
	const fill = 90
	w := withdrawn(Tessera, inv, Fill(fill))
	layouts := []Layout{Tessera, gpuMajor(Tessera), perGPUSlices(Tessera), profileClasses(Tessera), leanAttributes(Tessera),
		w, packedWithdrawn(w), profileClasses(leanAttributes(w)), noShares(Tessera), Plain, plainCounters(Plain), NVIDIA}
	for _, nodes := range []int{100, 500} {
		for _, kind := range ClaimKinds {
			for _, l := range layouts {
				benchmarkClaim(b, fmt.Sprintf("fill=%d/nodes=%d/claim=%s/layout=%s", fill, nodes, kind, l.Name), l, inv, fill, nodes, kind)
			}
		}
	}
}
