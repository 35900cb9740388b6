// Command dra-plugin is a shipped binary that imports the research wing.
package main

import (
	"fmt"

	"github.com/tessera-gpu/tessera/research/sim" // want research-wing
)

func main() { fmt.Println(sim.Name) }
