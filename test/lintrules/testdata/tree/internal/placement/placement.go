// Package placement is driver code that reaches into the research wing.
package placement

import "github.com/tessera-gpu/tessera/research/sim" // want research-wing

// Name is a research name inside the driver.
var Name = sim.Name
