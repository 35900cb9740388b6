// Package leaky is an API package that imports an implementation package.
package leaky

import "github.com/tessera-gpu/tessera/pkg/fine" // want api-leaf

// Driver comes from pkg/ instead of the contract.
const Driver = fine.Driver
