// Package gpus reaches NVML directly instead of through internal/nvml.
package gpus

import "github.com/NVIDIA/go-nvml/pkg/nvml" // want nvml-seam

// Success is NVML's success code, reached around the seam.
const Success = nvml.SUCCESS
