// Tests of the node cache that node-cache.patch adds to the allocator.
// overlay.sh copies this file into the patched package
// (structured/internal/incubating); make test-allocator-patched runs it with
// the package's own tests.

package incubating

import (
	"context"
	"fmt"
	"testing"

	v1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/dynamic-resource-allocation/cel"
	"k8s.io/utils/ptr"
)

const cacheTestDriver = "cache.test.example.com"

type cacheTestClasses map[string]*resourceapi.DeviceClass

func (c cacheTestClasses) List() ([]*resourceapi.DeviceClass, error) {
	var out []*resourceapi.DeviceClass
	for _, dc := range c {
		out = append(out, dc)
	}
	return out, nil
}

func (c cacheTestClasses) Get(name string) (*resourceapi.DeviceClass, error) {
	if dc, ok := c[name]; ok {
		return dc, nil
	}
	return nil, fmt.Errorf("no class %s", name)
}

var cacheTestClassList = cacheTestClasses{"any": {ObjectMeta: metav1.ObjectMeta{Name: "any"}}}

// cacheTestSlices returns a node's pool: a counter slice with one counter
// set "gpu" holding one "whole" counter, and a slice of two devices, "a" and
// "b", that each consume it, with a string attribute "name".
func cacheTestSlices(node string) []*resourceapi.ResourceSlice {
	pool := resourceapi.ResourcePool{Name: node, ResourceSliceCount: 2}
	one := map[string]resourceapi.Counter{"whole": {Value: resource.MustParse("1")}}
	dev := func(name string) resourceapi.Device {
		return resourceapi.Device{
			Name:             name,
			Attributes:       map[resourceapi.QualifiedName]resourceapi.DeviceAttribute{"name": {StringValue: ptr.To(name)}},
			ConsumesCounters: []resourceapi.DeviceCounterConsumption{{CounterSet: "gpu", Counters: one}},
		}
	}
	return []*resourceapi.ResourceSlice{
		{
			ObjectMeta: metav1.ObjectMeta{Name: node + "-counters"},
			Spec: resourceapi.ResourceSliceSpec{Driver: cacheTestDriver, Pool: pool, NodeName: ptr.To(node),
				SharedCounters: []resourceapi.CounterSet{{Name: "gpu", Counters: one}}},
		},
		{
			ObjectMeta: metav1.ObjectMeta{Name: node + "-devices"},
			Spec: resourceapi.ResourceSliceSpec{Driver: cacheTestDriver, Pool: pool, NodeName: ptr.To(node),
				Devices: []resourceapi.Device{dev("a"), dev("b")}},
		},
	}
}

// cacheTestClaim asks for one device, of the given name if name is not empty.
func cacheTestClaim(name string) *resourceapi.ResourceClaim {
	req := &resourceapi.ExactDeviceRequest{DeviceClassName: "any", AllocationMode: resourceapi.DeviceAllocationModeExactCount, Count: 1}
	if name != "" {
		req.Selectors = []resourceapi.DeviceSelector{{CEL: &resourceapi.CELDeviceSelector{
			Expression: fmt.Sprintf("device.attributes[%q].name == %q", cacheTestDriver, name)}}}
	}
	return &resourceapi.ResourceClaim{
		ObjectMeta: metav1.ObjectMeta{Name: "claim", UID: "claim-uid"},
		Spec:       resourceapi.ResourceClaimSpec{Devices: resourceapi.DeviceClaim{Requests: []resourceapi.DeviceRequest{{Name: "r", Exactly: req}}}},
	}
}

var cacheTestFeatures = Features{PartitionableDevices: true}

// allocateOn allocates the claim on the node with the given devices of the
// node's pool allocated, and returns the device it got, "" if none.
func allocateOn(t *testing.T, slices []*resourceapi.ResourceSlice, node string, claim *resourceapi.ResourceClaim, allocated ...string) string {
	t.Helper()
	ctx := context.Background()
	state := AllocatedState{AllocatedDevices: sets.New[DeviceID](), AllocatedSharedDeviceIDs: sets.New[SharedDeviceID](), AggregatedCapacity: NewConsumedCapacityCollection()}
	for _, d := range allocated {
		state.AllocatedDevices.Insert(MakeDeviceID(cacheTestDriver, node, d))
	}
	a, err := NewAllocator(ctx, cacheTestFeatures, state, cacheTestClassList, slices, cel.NewCache(10, cel.Features{}))
	if err != nil {
		t.Fatal(err)
	}
	results, err := a.Allocate(ctx, &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}}, []*resourceapi.ResourceClaim{claim})
	if err != nil {
		t.Fatal(err)
	}
	if len(results) == 0 {
		return ""
	}
	return results[0].Devices.Results[0].Device
}

func cached(node string) *nodePools {
	nodeCache.Lock()
	defer nodeCache.Unlock()
	return nodeCache.nodes[node]
}

// The pools of a node are built once and used as long as its slices are the
// same objects; new objects (an update) are built anew and replace them.
func TestNodeCacheFollowsSliceObjects(t *testing.T) {
	slices := cacheTestSlices("cache-follow")
	if got := allocateOn(t, slices, "cache-follow", cacheTestClaim("")); got != "a" {
		t.Fatalf("allocated %q, want a", got)
	}
	first := cached("cache-follow")
	if first == nil {
		t.Fatal("node not cached")
	}
	allocateOn(t, slices, "cache-follow", cacheTestClaim(""))
	if cached("cache-follow") != first {
		t.Error("the same slices were converted again")
	}

	// The update renames device a: the allocator must see the new name.
	updated := []*resourceapi.ResourceSlice{slices[0], slices[1].DeepCopy()}
	updated[1].Spec.Devices[0].Name = "c"
	if got := allocateOn(t, updated, "cache-follow", cacheTestClaim("")); got != "c" {
		t.Errorf("after the update allocated %q, want c", got)
	}
	if cached("cache-follow") == first {
		t.Error("an updated slice was not converted again")
	}
}

// CEL results are remembered per device and expression: two claims that
// select different devices on the same slices each get theirs.
func TestNodeCacheCELPerExpression(t *testing.T) {
	slices := cacheTestSlices("cache-cel")
	for range 2 {
		for _, want := range []string{"b", "a", "b"} {
			if got := allocateOn(t, slices, "cache-cel", cacheTestClaim(want)); got != want {
				t.Errorf("claim for %s allocated %q", want, got)
			}
		}
	}
	// b's expression on a and b, a's on a: the walk stops at the first fit.
	if n := len(cached("cache-cel").matches); n != 3 {
		t.Errorf("%d CEL results remembered, want 3", n)
	}
}

// What allocated devices leave of the counters follows the allocated state,
// which changes between pods while the slices stay.
func TestNodeCacheCountersFollowAllocations(t *testing.T) {
	slices := cacheTestSlices("cache-counters")
	for _, step := range []struct {
		allocated []string
		want      string
	}{
		{nil, "a"},
		{[]string{"a"}, ""}, // b shares a's one counter
		{[]string{"b"}, ""},
		{nil, "a"},
	} {
		if got := allocateOn(t, slices, "cache-counters", cacheTestClaim(""), step.allocated...); got != step.want {
			t.Errorf("with %v allocated got %q, want %q", step.allocated, got, step.want)
		}
	}
}

// Only nodes whose slices name them and hold whole pools are cached.
func TestNodeCacheOnlyWholePoolsOnNode(t *testing.T) {
	for name, mutate := range map[string]func([]*resourceapi.ResourceSlice){
		"no node name": func(s []*resourceapi.ResourceSlice) { s[0].Spec.NodeName = nil; s[0].Spec.AllNodes = ptr.To(true) },
		"missing slice": func(s []*resourceapi.ResourceSlice) {
			s[1].Spec.Pool.ResourceSliceCount = 3
			s[0].Spec.Pool.ResourceSliceCount = 3
		},
		"two generations": func(s []*resourceapi.ResourceSlice) { s[1].Spec.Pool.Generation = 1 },
	} {
		t.Run(name, func(t *testing.T) {
			slices := cacheTestSlices("cache-whole")
			mutate(slices)
			if wholePoolsOnNode(slices, "cache-whole") {
				t.Error("cacheable")
			}
		})
	}
	if !wholePoolsOnNode(cacheTestSlices("cache-whole"), "cache-whole") {
		t.Error("a whole pool on the node is not cacheable")
	}
	if wholePoolsOnNode(cacheTestSlices("cache-whole"), "other-node") {
		t.Error("another node's slices are cacheable")
	}
}

// Claims that each bring a new expression cannot grow a node's CEL results
// past their bound.
func TestNodeCacheBoundsCELResults(t *testing.T) {
	slices := cacheTestSlices("cache-bound")
	allocateOn(t, slices, "cache-bound", cacheTestClaim(""))
	n := cached("cache-bound")
	device := &n.pools[0].DeviceSlicesTargetingNode[0].Spec.Devices[0]
	for i := range 3 * n.maxMatches {
		n.remember(device, fmt.Sprintf("expression %d", i), true)
		if len(n.matches) > n.maxMatches {
			t.Fatalf("%d results remembered, bound %d", len(n.matches), n.maxMatches)
		}
	}
}

// A node that publishes no slices any more is dropped from the cache.
func TestNodeCachePrunesNodesWithoutSlices(t *testing.T) {
	allocateOn(t, cacheTestSlices("cache-gone"), "cache-gone", cacheTestClaim(""))
	if cached("cache-gone") == nil {
		t.Fatal("node not cached")
	}
	allocateOn(t, cacheTestSlices("cache-other"), "cache-other", cacheTestClaim(""))
	if cached("cache-gone") != nil {
		t.Error("a node without slices is still cached")
	}
}
