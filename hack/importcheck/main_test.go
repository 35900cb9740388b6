package main

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestViolations(t *testing.T) {
	deps := []string{
		"fmt",
		"github.com/example/test/helpers",
		module + "/api/gpu",
		module + "/internal/prepare",
		module + "/researchnotes", // not research/
		module + "/internal/testing/builder",
		module + "/e2e/framework/cluster",
		module + "/research/sim",
		module + "/research/scheduler/plugin",
		module + "/testdata", // not test/
	}
	want := []string{module + "/internal/testing/builder", module + "/e2e/framework/cluster", module + "/research/sim", module + "/research/scheduler/plugin"}
	if diff := cmp.Diff(want, Violations(deps)); diff != "" {
		t.Errorf("Violations (-want +got):\n%s", diff)
	}
}

// TestShippedBinaries runs the check on the real closure of the shipped
// binaries, and on the simulator's, which must fail: the check would
// otherwise pass by finding nothing at all.
func TestShippedBinaries(t *testing.T) {
	if err := check(prefixed(Shipped)); err != nil {
		t.Error(err)
	}
	err := check([]string{"../../research/cmd/tessera-sim"})
	if err == nil || !strings.Contains(err.Error(), module+"/research/sim") {
		t.Errorf("check of the simulator = %v, want it to name research/sim", err)
	}
}

// prefixed makes the repository-relative packages relative to this test's
// directory.
func prefixed(pkgs []string) []string {
	out := make([]string, len(pkgs))
	for i, p := range pkgs {
		out[i] = "../../" + strings.TrimPrefix(p, "./")
	}
	return out
}

// TestDockerfileBuildsOnlyShipped: the image builds exactly the binaries
// this check covers, so neither can grow without the other.
func TestDockerfileBuildsOnlyShipped(t *testing.T) {
	data, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	var built []string
	for _, m := range regexp.MustCompile(`go build [^\n]*?(\./cmd/[^\s;&\\]+)`).FindAllStringSubmatch(string(data), -1) {
		built = append(built, m[1])
	}
	if diff := cmp.Diff(Shipped, built); diff != "" {
		t.Errorf("binaries the Dockerfile builds (-want +got):\n%s", diff)
	}
}
