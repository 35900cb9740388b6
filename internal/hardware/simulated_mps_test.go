package hardware_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"k8s.io/klog/v2/ktesting"

	"github.com/tessera-gpu/tessera/internal/hardware"
	tnvml "github.com/tessera-gpu/tessera/internal/nvml"
	"github.com/tessera-gpu/tessera/internal/nvml/nvmlmock"
	"github.com/tessera-gpu/tessera/internal/sharing"
)

// TestSimulatedMPSDaemonsClaimTheirClients: on a node opened as the local
// cluster opens it (a mock with a state directory), the processes the
// telemetry file makes an MPS daemon's clients are that daemon's processes,
// as the per-claim metrics read them; a client of a daemon that does not
// run, or on a GPU its daemon does not serve, fails the listing with what
// is wrong, and so does a telemetry file that is no valid JSON.
func TestSimulatedMPSDaemonsClaimTheirClients(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	state := t.TempDir()
	node, err := hardware.Open(ctx, hardware.Config{NVML: tnvml.Backend{Mock: "dgxh200", Count: 2}, Seed: "n1", StateDir: state, ProcRoot: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = node.Close() })
	inv, err := node.NVML.Discover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	gpu0, gpu1 := inv.GPUs[0].UUID, inv.GPUs[1].UUID
	for _, d := range []sharing.Daemon{{ID: "uid-a", GPUUUID: gpu1}, {ID: "uid-b", GPUUUID: gpu1}} {
		if err := node.MPS.Start(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	write := func(content string) {
		if err := os.WriteFile(filepath.Join(state, nvmlmock.TelemetryFileName), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	write(`{"gpus": {"1": {"processes": [
		{"pid": 10, "smUtilizationPercent": 30, "mpsDaemon": "uid-a"},
		{"pid": 20, "smUtilizationPercent": 45, "mpsDaemon": "uid-b"},
		{"pid": 21, "mpsDaemon": "uid-b"},
		{"pid": 99, "smUtilizationPercent": 5}]}}}`)
	got, err := node.MPS.Processes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string][]int{"uid-a": {10}, "uid-b": {20, 21}}, got); diff != "" {
		t.Errorf("daemons' processes (-want +got):\n%s", diff)
	}

	for name, tc := range map[string]struct{ file, wantErr string }{
		"a daemon that does not run": {
			file:    `{"gpus": {"1": {"processes": [{"pid": 10, "mpsDaemon": "uid-gone"}]}}}`,
			wantErr: `PID 10 on GPU ` + gpu1 + ` is a client of MPS daemon "uid-gone", which does not run`,
		},
		"a GPU the daemon does not serve": {
			file:    `{"gpus": {"0": {"processes": [{"pid": 10, "mpsDaemon": "uid-a"}]}, "1": {}}}`,
			wantErr: `PID 10 on GPU ` + gpu0 + ` is a client of MPS daemon "uid-a", which serves GPU ` + gpu1,
		},
		"no JSON": {file: `{"gpus": `, wantErr: nvmlmock.TelemetryFileName},
	} {
		t.Run(name, func(t *testing.T) {
			write(tc.file)
			got, err := node.MPS.Processes(ctx)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("processes %v, err %v; want an error saying %q", got, err, tc.wantErr)
			}
		})
	}

	// A stopped daemon's clients are gone with it once the file says so.
	if err := node.MPS.Stop(ctx, "uid-a"); err != nil {
		t.Fatal(err)
	}
	write(`{"gpus": {"0": {}, "1": {"processes": [{"pid": 20, "mpsDaemon": "uid-b"}]}}}`)
	if got, err := node.MPS.Processes(ctx); err != nil || !cmp.Equal(map[string][]int{"uid-b": {20}}, got) {
		t.Errorf("after uid-a stopped: processes %v, err %v; want uid-b's 20", got, err)
	}
}
