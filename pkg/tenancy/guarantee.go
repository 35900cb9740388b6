package tenancy

import (
	"fmt"
	"slices"
	"strings"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
)

// FleetCapacity is what the published fleet holds, from the memory of every
// published Tessera device (DeviceMemory): Memory is the sum of each
// physical GPU's memory, once per GPU however many forms it is published in
// (gpu-N, gpu-N-shared and its MIG partitions all draw on one GPU; a GPU's
// memory is the largest of its devices'); Devices counts, for the whole-GPU
// class, the GPUs published whole. Other classes have no device capacity
// here: how many MIG partitions or shares fit depends on which are chosen.
func FleetCapacity(memory map[DeviceID]int64) Usage {
	perGPU := map[DeviceID]int64{}
	whole := int64(0)
	for d, m := range memory {
		if d.Driver != gpuapi.DriverName {
			continue
		}
		gpu, rest := gpuOf(d.Device)
		if gpu == "" {
			continue
		}
		if rest == "" {
			whole++
		}
		key := DeviceID{d.Driver, d.Pool, gpu}
		perGPU[key] = max(perGPU[key], m)
	}
	u := Usage{Devices: map[string]int64{gpuapi.ClassGPU: whole}}
	for _, m := range perGPU {
		u.Memory += m
	}
	return u
}

// gpuOf splits a device name as docs/design.md fixes them ("gpu-N",
// "gpu-N-shared", "gpu-N-mig-<profile>-<start>") into its GPU ("gpu-N") and
// the rest; gpu is "" for a name of another form.
func gpuOf(device string) (gpu, rest string) {
	n, ok := strings.CutPrefix(device, "gpu-")
	if !ok {
		return "", ""
	}
	index, rest, _ := strings.Cut(n, "-")
	if index == "" || strings.Trim(index, "0123456789") != "" {
		return "", ""
	}
	return "gpu-" + index, rest
}

// GuaranteeOverCommitment says how the tenants' guarantees add up to more
// than fleet (FleetCapacity) holds: guaranteed GPU memory above the fleet's,
// or guaranteed devices of a class above the fleet's count of it. "" when
// every guarantee can be given back at once.
func GuaranteeOverCommitment(tenants []*tenancyv1.GPUTenant, fleet Usage) string {
	var sum Usage
	sum.Devices = map[string]int64{}
	for _, t := range tenants {
		g := Guaranteed(t)
		sum.Memory += g.Memory
		for c, n := range g.Devices {
			sum.Devices[c] += n
		}
	}
	var over []string
	if sum.Memory > fleet.Memory {
		over = append(over, fmt.Sprintf("gpuMemory guaranteed %s > published %s", quantity(sum.Memory), quantity(fleet.Memory)))
	}
	classes := make([]string, 0, len(fleet.Devices))
	for c := range fleet.Devices {
		classes = append(classes, c)
	}
	slices.Sort(classes)
	for _, c := range classes {
		if sum.Devices[c] > fleet.Devices[c] {
			over = append(over, fmt.Sprintf("%s devices guaranteed %d > published %d", c, sum.Devices[c], fleet.Devices[c]))
		}
	}
	if len(over) == 0 {
		return ""
	}
	return "the guarantees of all GPUTenants add up to more than the fleet holds: " + strings.Join(over, "; ")
}
