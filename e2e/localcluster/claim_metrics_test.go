package localcluster

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/apimachinery/pkg/util/wait"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/internal/nvml/nvmlmock"
	"github.com/tessera-gpu/tessera/internal/testing/builder"
)

// TestClaimSeriesFollowMockUtilization: two tenants' pods each hold a whole
// GPU of the tenancy node, whose mock GPUs are set to 80 % and 10 % busy
// through the plugin's telemetry file. The node's plugin, scraped as the
// chart's metrics-reader, serves for each claim its own series: labelled
// with its own namespace, pod and device, at its own GPU's utilization.
func TestClaimSeriesFollowMockUtilization(t *testing.T) {
	needCluster(t)
	ctx := testContext(t)
	busy := map[int]uint32{0: 80, 1: 10}
	setMockTelemetry(t, tenancyNode.Name, busy)

	type held struct{ namespace, pod string }
	var pods []held
	for _, prefix := range []string{"series-a", "series-b"} {
		tenant := newTenant(t, prefix, tenancyv1.GPUTenantSpec{AllowedDeviceClasses: []string{gpuapi.ClassGPU}})
		ns := tenantNamespace(t, tenant.Name)
		createTemplate(t, ns, "gpu", builder.MakeRequest("gpu", gpuapi.ClassGPU).Obj())
		waitRunning(t, createPod(t, ns, "held", "gpu", onTenancyNodes))
		pods = append(pods, held{ns, "held"})
	}

	reader := serviceAccountToken(t, ctx, "e2e-series-"+rand.String(4), metricsReader)
	addr := node(t, tenancyNode.Name).MetricsAddress
	var got map[held]string
	want := map[held]string{}
	// The series follow the plugin's next samples (every 2 s here).
	err := wait.PollUntilContextTimeout(ctx, 2*time.Second, waitTimeout, true, func(context.Context) (bool, error) {
		got = map[held]string{}
		for _, s := range seriesOf(scrapeAuthorised(t, ctx, addr, reader), "tessera_claim_gpu_utilization_ratio") {
			got[held{s.labels["namespace"], s.labels["pod"]}] = s.labels["device"] + "=" + s.value
		}
		for _, p := range pods {
			dev := strings.TrimPrefix(strings.SplitN(got[p], "=", 2)[0], "gpu-")
			i, err := strconv.Atoi(dev)
			if err != nil {
				return false, nil
			}
			want[p] = fmt.Sprintf("gpu-%d=%s", i, strconv.FormatFloat(float64(busy[i])/100, 'g', -1, 64))
		}
		return maps.Equal(want, got), nil
	})
	if err != nil {
		t.Errorf("utilization series by pod: got %v, want %v (device=utilization)", got, want)
	}
}

// setMockTelemetry sets, through the node plugin's telemetry file, each of
// the node's mock GPUs to the given percent busy, and idle again after the
// test.
func setMockTelemetry(t *testing.T, nodeName string, busy map[int]uint32) {
	t.Helper()
	tel := nvmlmock.Telemetry{GPUs: map[int]nvmlmock.GPUTelemetry{}}
	for i, p := range busy {
		tel.GPUs[i] = nvmlmock.GPUTelemetry{UtilizationPercent: p}
	}
	writeMockTelemetry(t, nodeName, tel)
}

// writeMockTelemetry writes the node plugin's telemetry file, and sets every
// GPU and MIG instance it names idle again after the test. GPUs the file
// leaves out keep what they were doing.
func writeMockTelemetry(t *testing.T, nodeName string, tel nvmlmock.Telemetry) {
	t.Helper()
	file := filepath.Join(node(t, nodeName).StateDir, nvmlmock.TelemetryFileName)
	write := func(tel nvmlmock.Telemetry) error {
		raw, err := json.Marshal(tel)
		if err != nil {
			return err
		}
		tmp := file + ".tmp"
		if err := os.WriteFile(tmp, raw, 0o600); err != nil {
			return err
		}
		return os.Rename(tmp, file)
	}
	if err := write(tel); err != nil {
		t.Fatalf("set mock telemetry of %s: %v", nodeName, err)
	}
	t.Cleanup(func() {
		idle := nvmlmock.Telemetry{GPUs: map[int]nvmlmock.GPUTelemetry{}}
		for i, g := range tel.GPUs {
			var mig map[int]nvmlmock.MIGTelemetry
			for gi := range g.MIG {
				if mig == nil {
					mig = map[int]nvmlmock.MIGTelemetry{}
				}
				mig[gi] = nvmlmock.MIGTelemetry{}
			}
			idle.GPUs[i] = nvmlmock.GPUTelemetry{MIG: mig}
		}
		if err := write(idle); err != nil {
			t.Errorf("reset mock telemetry of %s: %v", nodeName, err)
		}
	})
}

// series is one sample of a Prometheus text exposition.
type series struct {
	labels map[string]string
	value  string
}

var exposedLabel = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)

// seriesOf are the samples of metric name in a text exposition.
func seriesOf(body, name string) []series {
	var out []series
	for line := range strings.Lines(body) {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), name+"{")
		if !ok {
			continue
		}
		labels, value, ok := strings.Cut(rest, "} ")
		if !ok {
			continue
		}
		s := series{labels: map[string]string{}, value: strings.Fields(value)[0]}
		for _, m := range exposedLabel.FindAllStringSubmatch(labels, -1) {
			s.labels[m[1]] = m[2]
		}
		out = append(out, s)
	}
	return out
}
