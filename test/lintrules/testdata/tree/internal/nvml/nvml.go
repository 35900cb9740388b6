// Package nvml is the one seam allowed to import go-nvml.
package nvml

import "github.com/NVIDIA/go-nvml/pkg/nvml"

// Success is NVML's success code, reached through the seam.
const Success = nvml.SUCCESS
