package localcluster

import (
	"strings"
	"testing"
)

// designGates are the DRA features docs/design.md relies on, all on by default in 1.37.
// The suite checks them on the running components rather than trusting defaults.
var designGates = []string{
	"DynamicResourceAllocation",
	"DRAPartitionableDevices",
	"DRAConsumableCapacity",
	"DRADeviceBindingConditions",
	"DRADeviceTaints",
	"DRAPrioritizedList",
	"DRAAdminAccess",
	"DRAExtendedResource",
	"DRAResourceClaimDeviceStatus",
}

// TestFeatureGates reads kubernetes_feature_enabled from the API server's and the
// scheduler's metrics: every gate the design relies on must be on in both.
func TestFeatureGates(t *testing.T) {
	needCluster(t)
	for component, url := range map[string]string{"kube-apiserver": local.APIServerURL, "kube-scheduler": local.SchedulerURL} {
		t.Run(component, func(t *testing.T) {
			enabled := featureMetrics(t, url)
			for _, gate := range designGates {
				on, known := enabled[gate]
				switch {
				case !known:
					t.Errorf("%s does not know feature gate %s", component, gate)
				case !on:
					t.Errorf("feature gate %s is off in %s", gate, component)
				}
			}
		})
	}
}

// featureMetrics returns gate name -> enabled from kubernetes_feature_enabled
// of the component at url.
func featureMetrics(t *testing.T, url string) map[string]bool {
	t.Helper()
	enabled := map[string]bool{}
	err := componentMetrics(t.Context(), url, func(line string) {
		rest, ok := strings.CutPrefix(line, `kubernetes_feature_enabled{name="`)
		if !ok {
			return
		}
		name, value, ok := strings.Cut(rest, `"`)
		if !ok {
			return
		}
		enabled[name] = strings.HasSuffix(strings.TrimSpace(value), " 1")
	})
	if err != nil {
		t.Fatal(err)
	}
	return enabled
}
