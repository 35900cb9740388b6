// Package tessera gives Go code the parts of Tessera's Helm chart that tests and
// the local cluster read directly. The chart in this directory is the single
// source of every object Tessera installs; Go embeds from it, never copies it.
package tessera

import (
	"bufio"
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"io"

	resourceapi "k8s.io/api/resource/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// DeviceClasses is the YAML stream of the DeviceClasses the chart installs
// (files/deviceclasses.yaml), for the allocator tests that must select devices
// exactly as the installed classes do.
//
//go:embed files/deviceclasses.yaml
var DeviceClasses []byte

// DeviceClassObjects decodes DeviceClasses.
func DeviceClassObjects() ([]*resourceapi.DeviceClass, error) {
	var out []*resourceapi.DeviceClass
	reader := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(DeviceClasses)))
	for {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read files/deviceclasses.yaml: %w", err)
		}
		dc := &resourceapi.DeviceClass{}
		if err := utilyaml.UnmarshalStrict(doc, dc); err != nil {
			return nil, fmt.Errorf("decode files/deviceclasses.yaml: %w", err)
		}
		if dc.Name != "" {
			out = append(out, dc)
		}
	}
}
