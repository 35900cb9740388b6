// Command tessera-sim is a research command; it may import the research wing.
package main

import (
	"fmt"

	"github.com/tessera-gpu/tessera/research/sim"
)

func main() { fmt.Println(sim.Name) }
