// Package gpu is the wire contract.
package gpu

// Driver is the driver name.
const Driver = "gpu.example.dev"
