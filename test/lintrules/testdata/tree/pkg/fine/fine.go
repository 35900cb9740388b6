// Package fine is a public package that imports only the wire contract.
package fine

import gpuapi "github.com/tessera-gpu/tessera/api/gpu"

// Driver is the contract's driver name.
const Driver = gpuapi.Driver
