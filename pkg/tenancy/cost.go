package tenancy

import (
	"errors"
	"fmt"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
)

// Holding is one device an allocation holds, with what it costs on its own.
// Cost turns a tenant's holdings into its usage: shares of one time-shared
// GPU are costed together, so a holding does not carry a final price.
type Holding struct {
	// Device is the allocated device.
	Device DeviceID
	// Class is the DeviceClass its request named ("" if none): devices are
	// budgeted per class.
	Class string
	// Memory is the held GPU memory of the device on its own, in bytes: a
	// whole GPU's or a MIG partition's memory; for a share, its dominant
	// fraction of the GPU's memory (DominantMemory). Zero for other drivers'
	// devices.
	Memory int64
	// SharedGPUMemory is set for a share only: the memory of the whole
	// time-shared GPU, what a tenant pays that keeps every other tenant off
	// the GPU.
	SharedGPUMemory int64
}

// ClaimHoldings are the devices claim's allocation holds. memory is the
// GPU memory of every Tessera device (DeviceMemory, or what the controller
// remembers of it): a share's consumed capacity is only half of its price,
// the other half is its GPU's memory. A Tessera device whose memory is not
// known is an error: the claim cannot be costed, and counting it short could
// let a tenant overshoot its budget.
func ClaimHoldings(claim *resourceapi.ResourceClaim, memory map[DeviceID]int64) ([]Holding, error) {
	if claim.Status.Allocation == nil {
		return nil, nil
	}
	var out []Holding
	for _, r := range claim.Status.Allocation.Devices.Results {
		h := Holding{Device: DeviceID{r.Driver, r.Pool, r.Device}, Class: RequestClass(&claim.Spec, r.Request)}
		if r.Driver == gpuapi.DriverName {
			m, ok := memory[h.Device]
			if !ok {
				return nil, fmt.Errorf("claim %s/%s: device %s/%s is not published, its memory is unknown", claim.Namespace, claim.Name, r.Pool, r.Device)
			}
			h.Memory = m
			if r.ShareID != nil {
				h.SharedGPUMemory = m
				h.Memory = DominantMemory(r.ConsumedCapacity, m)
			}
		}
		out = append(out, h)
	}
	return out, nil
}

// DominantMemory is what a share with the given consumed capacity holds of a
// time-shared GPU with gpuMemory bytes: its dominant fraction of the GPU,
// max(memory / gpuMemory, compute / 100), times gpuMemory, rounded up. Compute
// is a percentage of the GPU's SMs (100 = all); a share that takes half the
// SMs keeps half the GPU from everyone else, however little memory it asks
// for. A share without a consumed memory (which the scheduler always records
// for Tessera's shared devices, whose memory has a request policy) is
// assumed to take the whole GPU; one without a consumed compute, none.
func DominantMemory(consumed map[resourceapi.QualifiedName]resource.Quantity, gpuMemory int64) int64 {
	m, ok := consumedCapacity(consumed, gpuapi.CapMemory)
	if !ok {
		return gpuMemory
	}
	held := m.Value()
	if c, ok := consumedCapacity(consumed, gpuapi.CapCompute); ok {
		// Milli-percent times bytes stays below 2^63 for any GPU under 80 TiB.
		const whole = 100 * 1000
		if byCompute := ceilDiv(min(c.MilliValue(), whole)*gpuMemory, whole); byCompute > held {
			held = byCompute
		}
	}
	return min(held, gpuMemory)
}

func ceilDiv(a, b int64) int64 {
	if a <= 0 {
		return 0
	}
	return (a + b - 1) / b
}

func consumedCapacity(c map[resourceapi.QualifiedName]resource.Quantity, name string) (resource.Quantity, bool) {
	for _, k := range []resourceapi.QualifiedName{resourceapi.QualifiedName(name), resourceapi.QualifiedName(gpuapi.DriverName + "/" + name)} {
		if q, ok := c[k]; ok {
			return q, true
		}
	}
	return resource.Quantity{}, false
}

// Cost is what holdings cost tenant t (nil: namespaces of no tenant), in the
// unit of every GPU budget: held GPU memory, the bytes of GPU memory that
// the tenant's allocations keep other tenants from using. It is the one
// place that prices allocations; admission, status and metrics all call it.
//
//   - A whole GPU holds its memory; a MIG partition its profile's memory.
//   - A share holds at least its dominant fraction of its GPU
//     (DominantMemory).
//   - A tenant whose sharing is Exclusive (the default; also namespaces of
//     no tenant, which form one group) keeps every other tenant off each GPU
//     it holds a share of, so it pays the whole GPU's memory there, once,
//     however many shares it holds on it.
//   - A tenant whose sharing is Any leaves the rest of the GPU to the other
//     Any tenants: it pays the sum of its shares' dominant fractions there,
//     capped at the GPU's memory.
//
// Devices count one per allocated device of a request that names a class.
func Cost(t *tenancyv1.GPUTenant, holdings []Holding) Usage {
	u := Usage{Devices: map[string]int64{}}
	type gpu struct{ shares, whole int64 }
	gpus := map[DeviceID]*gpu{}
	for _, h := range holdings {
		if h.Class != "" {
			u.Devices[h.Class]++
		}
		if h.SharedGPUMemory == 0 {
			u.Memory += h.Memory
			continue
		}
		g := gpus[h.Device]
		if g == nil {
			g = &gpu{}
			gpus[h.Device] = g
		}
		g.shares += h.Memory
		g.whole = max(g.whole, h.SharedGPUMemory)
	}
	exclusive := SharingGroup(t) != tenancyv1.GroupAny
	for _, g := range gpus {
		if exclusive {
			u.Memory += g.whole
		} else {
			u.Memory += min(g.shares, g.whole)
		}
	}
	return u
}

// HeldBy are the holdings of the given claims' allocations. The caller
// passes the tenant's admitted claims. Claims that cannot be costed are
// reported together; the holdings of the others are returned all the same.
func HeldBy(claims []*resourceapi.ResourceClaim, memory map[DeviceID]int64) ([]Holding, error) {
	var held []Holding
	var errs []error
	for _, c := range claims {
		h, err := ClaimHoldings(c, memory)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		held = append(held, h...)
	}
	return held, errors.Join(errs...)
}

// RememberMemory is the device memory to cost with when slices may be gone:
// what is published now (DeviceMemory), plus what remembered (the previous
// RememberMemory) says of the devices that are not published now but that
// an allocated claim still holds. A kubelet restart deletes its node's
// slices for about 30 s; without this, every decision of a tenant with a
// claim there would fail for want of its memory. Devices no allocated claim
// holds are forgotten, so what is remembered stays bounded by what is
// published and allocated, and a deleted node's devices go with its last
// claims. Published memory always wins, and DeviceMemory takes a pool's
// memory only from its own node, so no node can change what is remembered
// of another node's devices. The result is a new map.
func RememberMemory(remembered, published map[DeviceID]int64, allocated map[DeviceID]bool) map[DeviceID]int64 {
	out := make(map[DeviceID]int64, len(published))
	for d, m := range remembered {
		if allocated[d] {
			out[d] = m
		}
	}
	for d, m := range published {
		out[d] = m
	}
	return out
}

// AllocatedDevices are the Tessera devices that the claims' allocations
// hold.
func AllocatedDevices(claims []*resourceapi.ResourceClaim) map[DeviceID]bool {
	out := map[DeviceID]bool{}
	for _, c := range claims {
		if c.Status.Allocation == nil {
			continue
		}
		for _, r := range c.Status.Allocation.Devices.Results {
			if r.Driver == gpuapi.DriverName {
				out[DeviceID{r.Driver, r.Pool, r.Device}] = true
			}
		}
	}
	return out
}
