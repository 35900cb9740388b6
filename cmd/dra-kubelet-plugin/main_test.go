package main

import (
	"bytes"
	"strings"
	"testing"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/client-go/kubernetes/scheme"
)

// TestSlicesCommand runs `slices` as a user would and decodes its output as
// a YAML stream of resource.k8s.io/v1 ResourceSlices.
func TestSlicesCommand(t *testing.T) {
	tests := map[string]struct {
		args        []string
		wantSlices  int
		wantDevices int
		wantErr     string
	}{
		"8 x H200": {args: []string{"slices", "--nvml=mock:dgxh200", "--node-name=n1"}, wantSlices: 5, wantDevices: 8 * 27},
		// The A100s are in MIG mode and cannot leave it without a reset:
		// partitions only.
		"2 x A100":      {args: []string{"slices", "--nvml=mock:dgxa100:2", "--node-name=n1"}, wantSlices: 2, wantDevices: 2 * 25},
		"MIG off":       {args: []string{"slices", "--nvml=mock:dgxh100:1", "--node-name=n1", "--disable-mig"}, wantSlices: 2, wantDevices: 2},
		"no node name":  {args: []string{"slices", "--nvml=mock:dgxh200"}, wantErr: "--node-name is required"},
		"bad backend":   {args: []string{"slices", "--nvml=mock:dgx9", "--node-name=n1"}, wantErr: `unknown mock model "dgx9"`},
		"unknown flags": {args: []string{"slices", "--frobnicate"}, wantErr: "unknown flag"},
	}
	for name, tc := range tests {
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
				t.Fatal(err)
			}
			docs := strings.Split(strings.TrimPrefix(out.String(), "---\n"), "\n---\n")
			if len(docs) != tc.wantSlices {
				t.Fatalf("%d documents, want %d", len(docs), tc.wantSlices)
			}
			devices := 0
			for _, doc := range docs {
				obj, gvk, err := scheme.Codecs.UniversalDeserializer().Decode([]byte(doc), nil, nil)
				if err != nil {
					t.Fatalf("decode: %v\n%s", err, doc)
				}
				slice, ok := obj.(*resourceapi.ResourceSlice)
				if !ok || gvk.GroupVersion() != resourceapi.SchemeGroupVersion {
					t.Fatalf("got %v, want a resource.k8s.io/v1 ResourceSlice", gvk)
				}
				if slice.Spec.Driver != "gpu.tessera.dev" || slice.Spec.Pool.Name != "n1" {
					t.Errorf("slice %s: driver %q pool %q", slice.Name, slice.Spec.Driver, slice.Spec.Pool.Name)
				}
				devices += len(slice.Spec.Devices)
			}
			if devices != tc.wantDevices {
				t.Errorf("%d devices, want %d", devices, tc.wantDevices)
			}
		})
	}
}
