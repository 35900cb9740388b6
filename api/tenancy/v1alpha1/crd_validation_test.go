package v1alpha1_test

import (
	"context"
	"os"
	"strings"
	"testing"

	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/cel"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	celconfig "k8s.io/apiserver/pkg/apis/cel"
	"sigs.k8s.io/yaml"
)

// validator runs the CEL rules of the GPUTenant CRD as the chart ships it,
// through the API server's own CEL validator, so that a rule that does not
// compile or says the wrong thing fails here and not on a cluster.
func validator(t *testing.T) (*cel.Validator, *schema.Structural) {
	t.Helper()
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
	s, err := schema.NewStructural(&props)
	if err != nil {
		t.Fatal(err)
	}
	v := cel.NewValidator(s, true, celconfig.PerCallLimit)
	if v == nil {
		t.Fatal("the CRD has no CEL rules")
	}
	return v, s
}

func TestGuaranteeWithinBudget(t *testing.T) {
	v, s := validator(t)
	tests := map[string]struct {
		spec    string
		wantErr string
	}{
		"no guarantee": {
			spec: `{budget: {gpuMemory: 800Gi}}`,
		},
		"guarantee without budget": {
			spec: `{guarantee: {gpuMemory: 300Gi}}`,
		},
		"guarantee below budget": {
			spec: `{budget: {gpuMemory: 800Gi, devices: {gpu.tessera.dev: 8}}, guarantee: {gpuMemory: 300Gi, devices: {gpu.tessera.dev: 2}}}`,
		},
		"guarantee equal to budget, in other units": {
			spec: `{budget: {gpuMemory: 1Ti}, guarantee: {gpuMemory: 1024Gi}}`,
		},
		"guarantee memory above budget": {
			spec:    `{budget: {gpuMemory: 800Gi}, guarantee: {gpuMemory: 801Gi}}`,
			wantErr: "guarantee.gpuMemory must not exceed budget.gpuMemory",
		},
		"guarantee devices above budget": {
			spec:    `{budget: {devices: {gpu.tessera.dev: 2}}, guarantee: {devices: {gpu.tessera.dev: 3}}}`,
			wantErr: "guarantee.devices must not exceed budget.devices",
		},
		"guarantee of a class the budget does not limit": {
			spec: `{budget: {devices: {gpu.tessera.dev: 2}}, guarantee: {devices: {mig.gpu.tessera.dev: 7}}}`,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			// Decoded as the API server does: integers stay int64.
			js, err := yaml.YAMLToJSON([]byte(tc.spec))
			if err != nil {
				t.Fatal(err)
			}
			var spec map[string]any
			if err := utiljson.Unmarshal(js, &spec); err != nil {
				t.Fatal(err)
			}
			spec["namespaceSelector"] = map[string]any{"matchLabels": map[string]any{"team": "a"}}
			obj := map[string]any{
				"apiVersion": "tenancy.tessera.dev/v1alpha1", "kind": "GPUTenant",
				"metadata": map[string]any{"name": "team-a"},
				"spec":     spec,
			}
			errs, _ := v.Validate(context.Background(), nil, s, obj, nil, celconfig.RuntimeCELCostBudget)
			got := errs.ToAggregate()
			switch {
			case tc.wantErr == "" && got != nil:
				t.Errorf("want no error, got %v", got)
			case tc.wantErr != "" && (got == nil || !strings.Contains(got.Error(), tc.wantErr)):
				t.Errorf("want an error saying %q, got %v", tc.wantErr, got)
			}
		})
	}
}
