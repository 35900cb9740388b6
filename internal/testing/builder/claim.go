// Package builder makes the Kubernetes objects Tessera's tests talk about —
// ResourceClaims with their requests and allocations, ResourceSlices with their
// devices, Nodes, GPUTenants and their Namespaces — fluently, in the style of
// kueue's test builders:
//
//	builder.MakeClaim("train").Namespace("team-a").
//		Request(builder.MakeRequest("gpu", gpuapi.ClassMIG).Profile("1g.18gb").Obj()).
//		Obj()
//
// Every builder starts from what the API server would hold for the smallest
// valid object and changes only what a test names, so tests say what matters to
// them and nothing else. Obj returns a fresh copy each time: a builder can serve
// as a template for many objects.
package builder

import (
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
)

// ClaimBuilder builds a ResourceClaim: its requests and, for node-side tests,
// the allocation the scheduler would have written into its status.
type ClaimBuilder struct {
	claim  resourceapi.ResourceClaim
	driver string
	pool   string
}

// MakeClaim starts a claim named name in namespace "default", whose UID is its
// name. Allocation results name Tessera's driver until Driver says otherwise.
func MakeClaim(name string) *ClaimBuilder {
	return &ClaimBuilder{
		claim: resourceapi.ResourceClaim{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: metav1.NamespaceDefault, UID: types.UID(name)},
		},
		driver: gpuapi.DriverName,
	}
}

// Namespace sets the claim's namespace.
func (b *ClaimBuilder) Namespace(namespace string) *ClaimBuilder {
	b.claim.Namespace = namespace
	return b
}

// UID sets the claim's UID.
func (b *ClaimBuilder) UID(uid string) *ClaimBuilder {
	b.claim.UID = types.UID(uid)
	return b
}

// Request adds device requests to the claim's spec; see MakeRequest and
// FirstAvailable.
func (b *ClaimBuilder) Request(requests ...resourceapi.DeviceRequest) *ClaimBuilder {
	b.claim.Spec.Devices.Requests = append(b.claim.Spec.Devices.Requests, requests...)
	return b
}

// SpecConfig adds opaque configuration for the driver to the claim's spec, as a
// user writes it; raw is its JSON, requests limits it to those requests.
func (b *ClaimBuilder) SpecConfig(raw string, requests ...string) *ClaimBuilder {
	b.claim.Spec.Devices.Config = append(b.claim.Spec.Devices.Config, resourceapi.DeviceClaimConfiguration{
		Requests: requests,
		DeviceConfiguration: resourceapi.DeviceConfiguration{Opaque: &resourceapi.OpaqueDeviceConfiguration{
			Driver: b.driver, Parameters: runtime.RawExtension{Raw: []byte(raw)},
		}},
	})
	return b
}

// Driver sets the driver that the allocation results added after it name.
func (b *ClaimBuilder) Driver(driver string) *ClaimBuilder {
	b.driver = driver
	return b
}

// Pool sets the pool that the allocation results added after it name. Tessera
// names a node's pool after the node.
func (b *ClaimBuilder) Pool(pool string) *ClaimBuilder {
	b.pool = pool
	return b
}

// Device records that the scheduler allocated device of the current pool for
// request, exclusively.
func (b *ClaimBuilder) Device(request, device string) *ClaimBuilder {
	b.addResult(resourceapi.DeviceRequestAllocationResult{
		Request: request, Driver: b.driver, Pool: b.pool, Device: device,
	})
	return b
}

// Share records that the scheduler allocated a share of a time-shared device
// for request: memory (a quantity, e.g. "20Gi") and compute (percent of the
// GPU's multiprocessors, e.g. "30") of its capacity, under shareID.
func (b *ClaimBuilder) Share(request, device, memory, compute, shareID string) *ClaimBuilder {
	id := types.UID(shareID)
	b.addResult(resourceapi.DeviceRequestAllocationResult{
		Request: request, Driver: b.driver, Pool: b.pool, Device: device, ShareID: &id,
		ConsumedCapacity: map[resourceapi.QualifiedName]resource.Quantity{
			gpuapi.DriverName + "/" + gpuapi.CapMemory:  resource.MustParse(memory),
			gpuapi.DriverName + "/" + gpuapi.CapCompute: resource.MustParse(compute),
		},
	})
	return b
}

// Config adds opaque configuration for the driver to the allocation, as the
// scheduler copies it from the class (source FromClass) or the claim (FromClaim).
// raw is the configuration's JSON; requests limits it to those requests.
func (b *ClaimBuilder) Config(source resourceapi.AllocationConfigSource, raw string, requests ...string) *ClaimBuilder {
	alloc := b.allocation()
	alloc.Devices.Config = append(alloc.Devices.Config, resourceapi.DeviceAllocationConfiguration{
		Source: source, Requests: requests,
		DeviceConfiguration: resourceapi.DeviceConfiguration{Opaque: &resourceapi.OpaqueDeviceConfiguration{
			Driver: b.driver, Parameters: runtime.RawExtension{Raw: []byte(raw)},
		}},
	})
	return b
}

// Allocated gives the claim an allocation result, empty until Device, Share or
// Config fill it: what a node sees for a claim with nothing for its driver.
func (b *ClaimBuilder) Allocated() *ClaimBuilder {
	b.allocation()
	return b
}

// ReservedFor reserves the claim for a pod, as the scheduler does when it
// binds the pod.
func (b *ClaimBuilder) ReservedFor(pod string, podUID types.UID) *ClaimBuilder {
	b.claim.Status.ReservedFor = append(b.claim.Status.ReservedFor, resourceapi.ResourceClaimConsumerReference{
		Resource: "pods", Name: pod, UID: podUID,
	})
	return b
}

// Obj returns the claim.
func (b *ClaimBuilder) Obj() *resourceapi.ResourceClaim {
	return b.claim.DeepCopy()
}

// Template returns a ResourceClaimTemplate of the claim's name, namespace and
// spec, for pods that get their claims generated.
func (b *ClaimBuilder) Template() *resourceapi.ResourceClaimTemplate {
	return &resourceapi.ResourceClaimTemplate{
		ObjectMeta: metav1.ObjectMeta{Name: b.claim.Name, Namespace: b.claim.Namespace},
		Spec:       resourceapi.ResourceClaimTemplateSpec{Spec: *b.claim.Spec.DeepCopy()},
	}
}

func (b *ClaimBuilder) allocation() *resourceapi.AllocationResult {
	if b.claim.Status.Allocation == nil {
		b.claim.Status.Allocation = &resourceapi.AllocationResult{}
	}
	return b.claim.Status.Allocation
}

func (b *ClaimBuilder) addResult(r resourceapi.DeviceRequestAllocationResult) {
	alloc := b.allocation()
	alloc.Devices.Results = append(alloc.Devices.Results, r)
}
