// Command mps-standin is the real-node lane's nvidia-cuda-mps-control and
// nvidia-cuda-mps-server: make node-e2e builds it static (CGO_ENABLED=0) and
// the lane installs it under both names in the fake driver root, where the
// plugin runs it as it runs NVIDIA's on a GPU node (--driver-mps), and
// mounts it into test pods, where it is the MPS client that reads a daemon's
// limits back through the container's pipe directory. It acts as the name
// it is run by, as package mpsstandin describes, following
// nvidia-cuda-mps-control(1). It is a test tool: the product image does not
// carry it (see the Dockerfile, which builds cmd/ only).
package main

import (
	"fmt"
	"os"

	"github.com/tessera-gpu/tessera/internal/sharing"
	"github.com/tessera-gpu/tessera/internal/sharing/mpsstandin"
)

func main() {
	mpsstandin.Main(sharing.Launch)
	fmt.Fprintf(os.Stderr, "%s: run me as %s or %s\n", os.Args[0], mpsstandin.ControlName, mpsstandin.ServerName)
	os.Exit(2)
}
