package resourceslice

import (
	"fmt"
	"io"

	resourceapi "k8s.io/api/resource/v1"
	"sigs.k8s.io/yaml"
)

// WriteYAML writes the slices as a YAML stream, one document each.
func WriteYAML(w io.Writer, slices []*resourceapi.ResourceSlice) error {
	for _, s := range slices {
		b, err := yaml.Marshal(s)
		if err != nil {
			return fmt.Errorf("marshal ResourceSlice %s: %w", s.Name, err)
		}
		if _, err := fmt.Fprintf(w, "---\n%s", b); err != nil {
			return err
		}
	}
	return nil
}
