package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestNVMLReportCommand runs `nvml-report` as a user would: on a mock it
// finds no difference from the mock's own model and exits zero; without a
// driver it fails naming the paths tried. (internal/nvmlreport proves that
// it changes no GPU.)
func TestNVMLReportCommand(t *testing.T) {
	for name, tc := range map[string]struct {
		args    []string
		wantOut []string
		wantErr string
	}{
		"2 x H200": {
			args:    []string{"nvml-report", "--nvml=mock:dgxh200:2"},
			wantOut: []string{`GPU 1: minor 1`, `"NVIDIA H200"`, "compared with the mock model dgxh200", "= MIG profile 0 1g.18gb", "= devices published (27)", "0 differences that matter"},
		},
		"MIG not offered": {
			args:    []string{"nvml-report", "--nvml=mock:dgxh100:1", "--disable-mig"},
			wantOut: []string{"= devices published (2): gpu-0 gpu-0-shared"},
		},
		"real NVML, no driver under the root": {
			args:    []string{"nvml-report", "--nvml=real", "--container-driver-root=/nonexistent-driver-root"},
			wantErr: "libnvidia-ml.so.1 not found under driver root /nonexistent-driver-root",
		},
	} {
		t.Run(name, func(t *testing.T) {
			var out bytes.Buffer
			cmd := newCommand()
			cmd.SetArgs(tc.args)
			cmd.SetOut(&out)
			cmd.SetErr(&bytes.Buffer{})
			err := cmd.Execute()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("%v\n%s", err, out.String())
			}
			for _, want := range tc.wantOut {
				if !strings.Contains(out.String(), want) {
					t.Errorf("output lacks %q:\n%s", want, out.String())
				}
			}
		})
	}
}
