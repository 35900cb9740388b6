package plugin_test

import (
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/tessera-gpu/tessera/internal/plugin"
)

// TestConfigValidate: a configuration is checked once, before anything
// starts, and every problem of it is reported at once with its flag.
func TestConfigValidate(t *testing.T) {
	type problem struct {
		name string
		args []string
		want []string // substrings of the error; none: valid
	}
	for _, tc := range []problem{
		{name: "defaults with a node", args: []string{"--node-name=n1"}},
		{name: "mock backend", args: []string{"--node-name=n1", "--nvml=mock:dgxh200:2", "--idle-threshold=0.05"}},
		{name: "no node", want: []string{"--node-name (or NODE_NAME) is required"}},
		{
			name: "idle threshold above 1", args: []string{"--node-name=n1", "--idle-threshold=5"},
			want: []string{"--idle-threshold=5: want a utilization ratio from 0 to 1"},
		},
		{
			name: "every problem at once", args: []string{"--idle-threshold=-1", "--claim-metrics-interval=-1s", "--mps-shm-size=-1Mi"},
			want: []string{"--node-name", "--idle-threshold=-1", "--claim-metrics-interval=-1s", "--mps-shm-size=-1Mi"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var cfg plugin.Config
			fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
			cfg.AddFlags(fs)
			cfg.AddRunFlags(fs)
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			err := cfg.Validate()
			if len(tc.want) == 0 {
				if err != nil {
					t.Errorf("Validate = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate = nil, want %q", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate = %q, want it to say %q", err, w)
				}
			}
		})
	}
}

// TestConfigRejectsBadBackend: a backend that names no NVML is refused
// with its flag, before any command runs.
func TestConfigRejectsBadBackend(t *testing.T) {
	var cfg plugin.Config
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	cfg.AddFlags(fs)
	err := fs.Parse([]string{"--nvml=mock:dgx9"})
	if err == nil || !strings.Contains(err.Error(), `--nvml`) || !strings.Contains(err.Error(), `unknown mock model "dgx9"`) {
		t.Errorf("parse --nvml=mock:dgx9 = %v, want the flag and the unknown model", err)
	}
}
