package suite

import (
	"bufio"
	"crypto/tls"
	"io"
	"net/http"
	"strings"
	"testing"

	"k8s.io/client-go/rest"
)

// designGates are the DRA features DESIGN.md relies on, all on by default in 1.37.
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
			enabled := featureMetrics(t, url+"/metrics")
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

// featureMetrics returns gate name -> enabled from kubernetes_feature_enabled.
func featureMetrics(t *testing.T, url string) map[string]bool {
	t.Helper()
	cfg := rest.CopyConfig(local.Config)
	// The scheduler serves with a self-signed certificate; the client certificate
	// is what matters here.
	cfg.Insecure = true
	cfg.CAFile, cfg.CAData = "", nil
	transport, err := rest.TransportFor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if tr, ok := transport.(*http.Transport); ok {
		tr.TLSClientConfig = tr.TLSClientConfig.Clone()
		tr.TLSClientConfig.MinVersion = tls.VersionTLS12
	}
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := (&http.Client{Transport: transport}).Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer func() { _ = resp.Body.Close() }() // a read response; nothing to learn from closing it
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		t.Fatalf("GET %s: %s %s", url, resp.Status, body)
	}
	enabled := map[string]bool{}
	scanner := bufio.NewScanner(resp.Body)
	scanner.Buffer(make([]byte, 1<<20), 1<<20)
	for scanner.Scan() {
		line := scanner.Text()
		rest, ok := strings.CutPrefix(line, `kubernetes_feature_enabled{name="`)
		if !ok {
			continue
		}
		name, value, ok := strings.Cut(rest, `"`)
		if !ok {
			continue
		}
		enabled[name] = strings.HasSuffix(strings.TrimSpace(value), " 1")
	}
	if err := scanner.Err(); err != nil {
		t.Fatalf("read %s: %v", url, err)
	}
	return enabled
}
