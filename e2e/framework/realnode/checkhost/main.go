// Command checkhost says whether this machine can run make node-e2e's real
// node, listing every missing piece with its fix, before make builds anything
// for it.
package main

import (
	"fmt"
	"os"

	"github.com/tessera-gpu/tessera/e2e/framework/realnode"
)

func main() {
	if _, err := realnode.CheckHost(""); err != nil {
		fmt.Fprintln(os.Stderr, "make node-e2e:", err)
		os.Exit(1)
	}
}
