package nvml_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"k8s.io/klog/v2/ktesting"

	tnvml "github.com/tessera-gpu/tessera/internal/nvml"
	"github.com/tessera-gpu/tessera/internal/nvml/nvmlmock"
)

// TestMockFollowsTelemetryFile: a mock opened with a state file, as the
// local cluster's plugins open it, takes each GPU's utilization from the
// telemetry file beside it, again whenever the file changes; no file leaves
// the GPUs idle, and a file naming a GPU the mock lacks or no valid JSON
// fails the reading instead of passing for idle.
func TestMockFollowsTelemetryFile(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	dir := t.TempDir()
	lib, err := tnvml.Open(tnvml.Backend{Mock: "dgxh200", Count: 2, Seed: "n1", StateFile: filepath.Join(dir, nvmlmock.StateFileName)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = lib.Shutdown() })
	node, err := lib.Discover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tele := lib.(tnvml.Telemetry)
	utilization := func() ([]float64, error) {
		var out []float64
		for _, g := range node.GPUs {
			u, err := tele.GPUUsage(ctx, g.UUID)
			if err != nil {
				return nil, err
			}
			out = append(out, *u.Utilization)
		}
		return out, nil
	}
	file := filepath.Join(dir, nvmlmock.TelemetryFileName)
	write := func(content string) {
		if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, step := range []struct {
		name, file string
		want       []float64
		wantErr    bool
	}{
		{name: "no file", want: []float64{0, 0}},
		{name: "GPU 1 busy", file: `{"gpus": {"1": {"utilizationPercent": 80}}}`, want: []float64{0, 0.8}},
		{name: "GPU 0 busy too, GPU 1 left as it was", file: `{"gpus": {"0": {"utilizationPercent": 3}}}`, want: []float64{0.03, 0.8}},
		{name: "a GPU the mock lacks", file: `{"gpus": {"2": {"utilizationPercent": 50}}}`, wantErr: true},
		{name: "no JSON", file: `{"gpus": `, wantErr: true},
		{name: "an unknown field", file: `{"gpus": {"0": {"utilisation": 50}}}`, wantErr: true},
		{name: "valid again", file: `{"gpus": {"0": {"utilizationPercent": 0}, "1": {"utilizationPercent": 100}}}`, want: []float64{0, 1}},
	} {
		if step.file != "" {
			write(step.file)
		}
		got, err := utilization()
		if (err != nil) != step.wantErr {
			t.Fatalf("%s: error %v, want error %t", step.name, err, step.wantErr)
		}
		if diff := cmp.Diff(step.want, got); !step.wantErr && diff != "" {
			t.Errorf("%s: utilization (-want +got):\n%s", step.name, diff)
		}
	}
}
