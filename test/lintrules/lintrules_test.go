package lintrules

import (
	"bytes"
	"encoding/json"
	"errors"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// The fixture marks every import a rule must refuse with "// want <rule>".
var (
	wantMarker = regexp.MustCompile(`// want ([a-z-]+)$`)
	ruleInText = regexp.MustCompile(`from list '([^']+)'`)
)

// golangciLint returns the linter make builds from tools/lint ($TESSERA_GOLANGCI_LINT).
func golangciLint(t *testing.T) string {
	t.Helper()
	path := os.Getenv("TESSERA_GOLANGCI_LINT")
	if path == "" {
		t.Skip("TESSERA_GOLANGCI_LINT is not set: run these tests with make unit, which builds golangci-lint from tools/lint")
	}
	return path
}

// TestDepguardRules lints testdata/tree, laid out like the project (module path, api/,
// pkg/, internal/) and linted with the project's own .golangci.yml, and expects exactly
// the imports marked "// want <rule>" to be reported, each by that rule. The unmarked
// imports are the allowed cases each rule must let through: internal/nvml importing
// go-nvml, pkg/ importing api/gpu, api/config importing api/gpu.
func TestDepguardRules(t *testing.T) {
	bin := golangciLint(t)
	tree := t.TempDir()
	copyTree(t, "testdata/tree", tree)
	for _, f := range []string{"go.mod", "go.sum", ".golangci.yml"} {
		copyFile(t, filepath.Join("..", "..", f), filepath.Join(tree, f))
	}

	// The config reports paths relative to the git root, as in the project.
	if out, err := exec.Command("git", "init", "-q", tree).CombinedOutput(); err != nil {
		t.Fatalf("git init: %v\n%s", err, out)
	}

	want := markedImports(t, tree)
	for _, rule := range depguardRules(t, filepath.Join(tree, ".golangci.yml")) {
		if !slices.ContainsFunc(want, func(w string) bool { return strings.HasSuffix(w, " "+rule) }) {
			t.Errorf("no import in testdata/tree breaks the depguard rule %q: add one marked \"// want %s\"", rule, rule)
		}
	}

	reportPath := filepath.Join(t.TempDir(), "report.json")
	cmd := exec.Command(bin, "run", "--allow-serial-runners", "--enable-only", "depguard",
		"--output.json.path", reportPath, "--output.text.path", "stderr", "./...")
	cmd.Dir = tree
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=readonly")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	// golangci-lint exits 1 when it reports issues, which is what this test expects.
	if exit := (*exec.ExitError)(nil); err != nil && (!errors.As(err, &exit) || exit.ExitCode() != 1) {
		t.Fatalf("running %s: %v\n%s", bin, err, stderr.Bytes())
	}
	out, err := os.ReadFile(reportPath)
	if err != nil {
		t.Fatalf("golangci-lint wrote no report: %v\n%s", err, stderr.Bytes())
	}
	var report struct {
		Issues []struct {
			FromLinter string
			Text       string
			Pos        struct {
				Filename string
				Line     int
			}
		}
	}
	if err := json.Unmarshal(out, &report); err != nil {
		t.Fatalf("reading golangci-lint's JSON report: %v\n%s", err, out)
	}
	var got []string
	for _, is := range report.Issues {
		rule := "?"
		if m := ruleInText.FindStringSubmatch(is.Text); m != nil {
			rule = m[1]
		}
		got = append(got, finding(filepath.ToSlash(is.Pos.Filename), is.Pos.Line, rule))
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("depguard findings differ from the fixture's markers\n got: %q\nwant: %q\n%s", got, want, stderr.Bytes())
	}
}

func finding(file string, line int, rule string) string {
	return file + ":" + strconv.Itoa(line) + " " + rule
}

// depguardRules returns the names of the depguard rules the config defines.
func depguardRules(t *testing.T, config string) []string {
	t.Helper()
	data, err := os.ReadFile(config)
	if err != nil {
		t.Fatalf("reading the lint config: %v", err)
	}
	var cfg struct {
		Linters struct {
			Settings struct {
				Depguard struct {
					Rules map[string]any `json:"rules"`
				} `json:"depguard"`
			} `json:"settings"`
		} `json:"linters"`
	}
	if err := yaml.Unmarshal(data, &cfg); err != nil {
		t.Fatalf("reading the lint config: %v", err)
	}
	rules := slices.Sorted(maps.Keys(cfg.Linters.Settings.Depguard.Rules))
	if len(rules) == 0 {
		t.Fatalf("%s defines no depguard rules", config)
	}
	return rules
}

// markedImports lists the fixture's "// want <rule>" markers as findings, sorted.
func markedImports(t *testing.T, tree string) []string {
	t.Helper()
	var want []string
	err := filepath.WalkDir(tree, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || filepath.Ext(path) != ".go" {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(tree, path)
		if err != nil {
			return err
		}
		for i, line := range strings.Split(string(data), "\n") {
			if m := wantMarker.FindStringSubmatch(line); m != nil {
				want = append(want, finding(filepath.ToSlash(rel), i+1, m[1]))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("reading the fixture's markers: %v", err)
	}
	slices.Sort(want)
	return want
}

func copyTree(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(from, path)
		if err != nil {
			return err
		}
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(to, rel), 0o755)
		}
		copyFile(t, path, filepath.Join(to, rel))
		return nil
	})
	if err != nil {
		t.Fatalf("copying the fixture: %v", err)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatalf("copying the fixture: %v", err)
	}
	if err := os.WriteFile(to, data, 0o644); err != nil {
		t.Fatalf("copying the fixture: %v", err)
	}
}
