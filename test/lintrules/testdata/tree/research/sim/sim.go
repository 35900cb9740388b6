// Package sim is research code; it may use the driver's private packages and the test helpers.
package sim

import (
	"github.com/tessera-gpu/tessera/internal/store"
	"github.com/tessera-gpu/tessera/internal/testing/builder"
)

// Name is the simulator's view of a private name.
var Name = builder.Claim("sim-" + store.Name)
