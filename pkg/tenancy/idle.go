package tenancy

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
)

// IdleReport is one node's kubelet plugin's report: by claim UID, since when
// the claim's devices have stayed below the utilization threshold.
type IdleReport map[types.UID]time.Time

// ParseIdleReport reads the idle report of a Lease named
// tenancyv1.IdleReportName(node): the node it speaks for and its entries.
// ok is false for a Lease that is no idle report.
func ParseIdleReport(lease *coordinationv1.Lease) (node string, report IdleReport, ok bool, err error) {
	node, ok = strings.CutPrefix(lease.Name, tenancyv1.IdleReportPrefix)
	if !ok || node == "" {
		return "", nil, false, nil
	}
	raw, found := lease.Annotations[tenancyv1.AnnotationIdleSince]
	if !found {
		return node, IdleReport{}, true, nil
	}
	if err := json.Unmarshal([]byte(raw), &report); err != nil {
		return node, nil, true, fmt.Errorf("idle report of node %s: %w", node, err)
	}
	return node, report, true, nil
}

// ClaimNode is the node whose pool holds every gpu.tessera.dev device of
// the claim's allocation (each node publishes its devices in the pool named
// after it, and the node-isolation policy keeps other nodes out of it); ""
// when the claim has no such device or its devices span pools.
func ClaimNode(claim *resourceapi.ResourceClaim) string {
	if claim.Status.Allocation == nil {
		return ""
	}
	node := ""
	for _, r := range claim.Status.Allocation.Devices.Results {
		if r.Driver != gpuapi.DriverName {
			continue
		}
		if node != "" && r.Pool != node {
			return ""
		}
		node = r.Pool
	}
	return node
}

// IdleSince says since when the claim has been idle, by the report of the
// node that holds its devices and no other: a node's report about another
// node's claim is ignored, so a node cannot get other nodes' claims marked
// idle (or reclaimed).
func IdleSince(reports map[string]IdleReport, claim *resourceapi.ResourceClaim) (time.Time, bool) {
	node := ClaimNode(claim)
	if node == "" {
		return time.Time{}, false
	}
	since, ok := reports[node][claim.UID]
	return since, ok
}
