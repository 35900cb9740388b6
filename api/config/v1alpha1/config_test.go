package v1alpha1

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

func TestDecode(t *testing.T) {
	gpuMeta := metav1.TypeMeta{APIVersion: "config.gpu.tessera.dev/v1alpha1", Kind: GPUConfigKind}
	migMeta := metav1.TypeMeta{APIVersion: "config.gpu.tessera.dev/v1alpha1", Kind: MIGConfigKind}
	for name, tc := range map[string]struct {
		raw     string
		want    Config
		wantErr []string // substrings, each naming a field
	}{
		"gpu mps": {
			raw: `{"apiVersion":"config.gpu.tessera.dev/v1alpha1","kind":"GPUConfig","sharing":{"strategy":"MPS","mps":{"defaultActiveThreadPercentage":50,"defaultPinnedDeviceMemoryLimit":"4Gi"}}}`,
			want: &GPUConfig{TypeMeta: gpuMeta, Sharing: &Sharing{Strategy: MPSStrategy, MPS: &MPSConfig{
				DefaultActiveThreadPercentage: ptr.To[int32](50), DefaultPinnedDeviceMemoryLimit: ptr.To(resource.MustParse("4Gi"))}}},
		},
		"gpu time slicing": {
			raw:  `{"apiVersion":"config.gpu.tessera.dev/v1alpha1","kind":"GPUConfig","sharing":{"strategy":"TimeSlicing","timeSlicing":{"interval":"Long"}}}`,
			want: &GPUConfig{TypeMeta: gpuMeta, Sharing: &Sharing{Strategy: TimeSlicingStrategy, TimeSlicing: &TimeSlicingConfig{Interval: LongTimeSlice}}},
		},
		"mig empty": {
			raw:  `{"apiVersion":"config.gpu.tessera.dev/v1alpha1","kind":"MIGConfig"}`,
			want: &MIGConfig{TypeMeta: migMeta},
		},
		"unknown field": {
			raw:     `{"apiVersion":"config.gpu.tessera.dev/v1alpha1","kind":"GPUConfig","sharing":{"strategy":"MPS","mpss":{}}}`,
			wantErr: []string{`unknown field "sharing.mpss"`},
		},
		"unknown kind": {
			raw:     `{"apiVersion":"config.gpu.tessera.dev/v1alpha1","kind":"TPUConfig"}`,
			wantErr: []string{"TPUConfig"},
		},
		"every problem with its path": {
			raw:     `{"apiVersion":"config.gpu.tessera.dev/v1alpha1","kind":"GPUConfig","sharing":{"strategy":"TimeSlicing","timeSlicing":{"interval":"Forever"},"mps":{"defaultActiveThreadPercentage":0}}}`,
			wantErr: []string{"sharing.timeSlicing.interval", "sharing.mps: Forbidden", "sharing.mps.defaultActiveThreadPercentage"},
		},
		"missing strategy": {
			raw:     `{"apiVersion":"config.gpu.tessera.dev/v1alpha1","kind":"GPUConfig","sharing":{}}`,
			wantErr: []string{"sharing.strategy: Required"},
		},
		"mig interval": {
			raw:     `{"apiVersion":"config.gpu.tessera.dev/v1alpha1","kind":"MIGConfig","sharing":{"strategy":"TimeSlicing","timeSlicing":{"interval":"Short"}}}`,
			wantErr: []string{"sharing.timeSlicing.interval: Forbidden"},
		},
		"mps inside mig": {
			raw:     `{"apiVersion":"config.gpu.tessera.dev/v1alpha1","kind":"MIGConfig","sharing":{"strategy":"MPS"}}`,
			wantErr: []string{"sharing.strategy: Unsupported value"},
		},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := Decode([]byte(tc.raw))
			if len(tc.wantErr) > 0 {
				if err == nil {
					t.Fatalf("Decode() = %+v, want error", got)
				}
				for _, s := range tc.wantErr {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("Decode() error %q does not mention %q", err, s)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Decode() (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDeepCopyIndependent(t *testing.T) {
	in := &GPUConfig{Sharing: &Sharing{Strategy: MPSStrategy, MPS: &MPSConfig{DefaultActiveThreadPercentage: ptr.To[int32](10)}}}
	out := in.DeepCopy()
	*out.Sharing.MPS.DefaultActiveThreadPercentage = 99
	if *in.Sharing.MPS.DefaultActiveThreadPercentage != 10 {
		t.Error("DeepCopy shares the MPS settings with its source")
	}
}
