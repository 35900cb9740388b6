package v1alpha1

import (
	"fmt"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/json"
)

// Config is a decoded opaque configuration object.
//
// +kubebuilder:object:generate=false
type Config interface {
	runtime.Object
	// Validate returns every problem of the object with its field path.
	Validate() error
}

var (
	scheme  = runtime.NewScheme()
	decoder runtime.Decoder
)

func init() {
	if err := AddToScheme(scheme); err != nil {
		panic(err)
	}
	// Strict decoding rejects unknown and duplicate fields, so that a typo
	// in a claim's config is an error instead of a silently ignored setting.
	decoder = json.NewSerializerWithOptions(json.DefaultMetaFactory, scheme, scheme, json.SerializerOptions{Strict: true})
}

// Decode decodes one opaque configuration object (JSON or YAML that the API
// server stored as JSON) strictly and validates it.
func Decode(raw []byte) (Config, error) {
	obj, gvk, err := decoder.Decode(raw, nil, nil)
	if err != nil {
		return nil, fmt.Errorf("decode %s config: %w", GroupName, err)
	}
	cfg, ok := obj.(Config)
	if !ok {
		return nil, fmt.Errorf("decode %s config: unexpected kind %s", GroupName, gvk.Kind)
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid %s: %w", gvk.Kind, err)
	}
	return cfg, nil
}
