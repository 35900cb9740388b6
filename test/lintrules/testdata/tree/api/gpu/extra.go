package gpu

import "github.com/tessera-gpu/tessera/api/version" // want wire-contract

// Version makes the contract depend on another API package.
const Version = version.Version
