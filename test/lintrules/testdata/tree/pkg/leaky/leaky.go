// Package leaky is a public package that imports a private one.
package leaky

import "github.com/tessera-gpu/tessera/internal/store" // want public-layers

// Name leaks a private name.
const Name = store.Name
