// Command importcheck fails when the import closure of Tessera's shipped
// binaries holds test, e2e or research code: what the image ships must not
// carry the simulator, the scheduler fork or test libraries.
//
//	go run ./hack/importcheck            # the shipped binaries
//	go run ./hack/importcheck ./cmd/...  # any packages
package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// module is Tessera's module path.
const module = "github.com/tessera-gpu/tessera"

// Shipped are the binaries the image ships (see the Dockerfile).
var Shipped = []string{"./cmd/dra-kubelet-plugin", "./cmd/dra-controller"}

// forbidden are the package trees no shipped binary may import, relative to
// the module: test libraries (test/, internal/testing/), the e2e harness, the
// research wing (the capacity simulator, the scheduler plugin, the commands
// built around them), the demo and dev tooling.
var forbidden = []string{"test", "internal/testing", "e2e", "research", "demo", "hack", "tools"}

// Violations returns the packages of deps that are in a forbidden tree.
func Violations(deps []string) []string {
	var out []string
	for _, pkg := range deps {
		rel, ok := strings.CutPrefix(pkg, module+"/")
		if !ok {
			continue
		}
		for _, f := range forbidden {
			if rel == f || strings.HasPrefix(rel, f+"/") {
				out = append(out, pkg)
				break
			}
		}
	}
	return out
}

// deps lists the import closure of pkgs, as the build sees it (no tests).
func deps(pkgs []string) ([]string, error) {
	var stderr bytes.Buffer
	cmd := exec.Command("go", append([]string{"list", "-deps"}, pkgs...)...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go list -deps %s: %w: %s", strings.Join(pkgs, " "), err, strings.TrimSpace(stderr.String()))
	}
	return strings.Fields(string(out)), nil
}

// check returns an error naming every forbidden package in the closure.
func check(pkgs []string) error {
	all, err := deps(pkgs)
	if err != nil {
		return err
	}
	if bad := Violations(all); len(bad) > 0 {
		return fmt.Errorf("the import closure of %s holds test, e2e or research code (find the importer with go list -deps -f '{{.ImportPath}}: {{.Imports}}'):\n  %s",
			strings.Join(pkgs, " "), strings.Join(bad, "\n  "))
	}
	return nil
}

func main() {
	pkgs := os.Args[1:]
	if len(pkgs) == 0 {
		pkgs = Shipped
	}
	if err := check(pkgs); err != nil {
		fmt.Fprintln(os.Stderr, "importcheck:", err)
		os.Exit(1)
	}
}
