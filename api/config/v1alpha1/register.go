package v1alpha1

import (
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
)

// GroupName is the API group of the opaque configuration.
const GroupName = gpuapi.ConfigGroup

// SchemeGroupVersion is config.gpu.tessera.dev/v1alpha1.
var SchemeGroupVersion = schema.GroupVersion{Group: GroupName, Version: "v1alpha1"}

// AddToScheme registers the configuration kinds.
func AddToScheme(s *runtime.Scheme) error {
	s.AddKnownTypes(SchemeGroupVersion, &GPUConfig{}, &MIGConfig{})
	return nil
}
