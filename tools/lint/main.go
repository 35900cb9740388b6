// Command golangci-lint is golangci-lint v2 with Kubernetes' logcheck compiled in as a
// module plugin, so that one run, one cache and one set of //nolint rules cover both.
// It is what `golangci-lint custom` would generate, kept here so that the build needs
// only the Go module proxy. hack/linters.sh builds it; .golangci.yml configures it.
package main

import (
	"fmt"
	"os"
	"runtime/debug"
	"strings"

	"github.com/golangci/golangci-lint/v2/pkg/commands"
	"github.com/golangci/golangci-lint/v2/pkg/exitcodes"

	// logcheck registers itself as the module plugin "logcheck".
	_ "sigs.k8s.io/logtools/logcheck/gclplugin"
)

const golangciModule = "github.com/golangci/golangci-lint/v2"

func main() {
	if err := commands.Execute(buildInfo()); err != nil {
		fmt.Fprintf(os.Stderr, "The command is terminated due to an error: %v\n", err)
		os.Exit(exitcodes.Failure)
	}
}

// buildInfo reports the pinned golangci-lint version, which `golangci-lint version`
// prints and the config's version check reads.
func buildInfo() commands.BuildInfo {
	info := commands.BuildInfo{Version: "unknown", Commit: "tessera tools/lint", Date: "(unknown)"}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return info
	}
	info.GoVersion = bi.GoVersion
	for _, dep := range bi.Deps {
		if dep.Path == golangciModule {
			info.Version = strings.TrimPrefix(dep.Version, "v")
		}
	}
	return info
}
