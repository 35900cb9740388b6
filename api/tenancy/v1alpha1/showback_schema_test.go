package v1alpha1_test

import (
	"encoding/json"
	"os"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/pruning"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/validation"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
)

// TestShowbackStatusMatchesTheCRD: a status with a showback summary, as the
// controller writes it, passes the shipped CRD's schema and loses nothing to
// its pruning (a field the schema lacks would be dropped silently).
func TestShowbackStatusMatchesTheCRD(t *testing.T) {
	raw, err := os.ReadFile("../../../deployments/helm/tessera/crds/tenancy.tessera.dev_gputenants.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var crd apiextensionsv1.CustomResourceDefinition
	if err := yaml.Unmarshal(raw, &crd); err != nil {
		t.Fatal(err)
	}
	var props apiextensions.JSONSchemaProps
	if err := apiextensionsv1.Convert_v1_JSONSchemaProps_To_apiextensions_JSONSchemaProps(crd.Spec.Versions[0].Schema.OpenAPIV3Schema, &props, nil); err != nil {
		t.Fatal(err)
	}
	_, s := validator(t)
	v, _, err := validation.NewSchemaValidator(&props)
	if err != nil {
		t.Fatal(err)
	}
	hours := func(q string) map[string]resource.Quantity {
		return map[string]resource.Quantity{"gpu.tessera.dev": resource.MustParse(q)}
	}
	window := func(start time.Time) *tenancyv1.ShowbackWindow {
		return &tenancyv1.ShowbackWindow{Start: metav1.NewTime(start), DeviceHours: hours("3500m"), ActiveDeviceHours: hours("2"), GPUMemoryHours: resource.MustParse("295Gi")}
	}
	tenant := tenancyv1.GPUTenant{
		TypeMeta:   metav1.TypeMeta{APIVersion: tenancyv1.SchemeGroupVersion.String(), Kind: "GPUTenant"},
		ObjectMeta: metav1.ObjectMeta{Name: "showback"},
		Status: tenancyv1.GPUTenantStatus{Showback: &tenancyv1.Showback{
			UpdatedAt:     metav1.NewTime(time.Date(2026, 12, 1, 1, 0, 0, 0, time.UTC)),
			Month:         window(time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)),
			PreviousMonth: window(time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)),
		}},
	}
	encoded, err := json.Marshal(tenant)
	if err != nil {
		t.Fatal(err)
	}
	var obj map[string]any
	if err := json.Unmarshal(encoded, &obj); err != nil {
		t.Fatal(err)
	}
	if errs := validation.ValidateCustomResource(nil, obj, v); len(errs) > 0 {
		t.Errorf("the CRD refuses the showback status: %v", errs.ToAggregate())
	}
	want := obj["status"]
	pruned := map[string]any{}
	if err := json.Unmarshal(encoded, &pruned); err != nil {
		t.Fatal(err)
	}
	pruning.Prune(pruned, s, true)
	if diff := cmp.Diff(want, pruned["status"]); diff != "" {
		t.Errorf("the CRD's pruning drops part of the status (-written +kept):\n%s", diff)
	}
}
