package main

import (
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestDigestPrintsEachFailedTestsOwnLines(t *testing.T) {
	in := `=== RUN   TestA
    a_test.go:1: fine
--- PASS: TestA (0.00s)
=== RUN   TestMatrix
=== RUN   TestMatrix/one
    m_test.go:10: one is fine
=== RUN   TestMatrix/two
    m_test.go:20: two went wrong
        with a second line
=== PAUSE TestP
=== RUN   TestMatrix/three
    m_test.go:30: three is fine
=== NAME  TestMatrix
    m_test.go:40: matrix cleanup
=== CONT  TestP
    p_test.go:5: p failed
--- FAIL: TestMatrix (1.00s)
    --- PASS: TestMatrix/one (0.10s)
    --- FAIL: TestMatrix/two (0.20s)
    --- PASS: TestMatrix/three (0.30s)
=== RUN   TestSub
=== RUN   TestSub/x
    s_test.go:1: x failed
--- FAIL: TestSub (0.00s)
    --- FAIL: TestSub/x (0.00s)
--- FAIL: TestP (0.00s)
FAIL
`
	var out strings.Builder
	if err := digest(strings.NewReader(in), &out); err != nil {
		t.Fatal(err)
	}
	// TestMatrix/two printed its last line first, TestSub/x last.
	want := `
Why each failed test failed, the first to fail last (its last 40 lines, the others' last 6; the whole output is above):
--- TestSub/x
    s_test.go:1: x failed
--- TestP
    p_test.go:5: p failed
--- TestMatrix
    m_test.go:40: matrix cleanup
--- TestMatrix/two
    m_test.go:20: two went wrong
        with a second line
`
	if diff := cmp.Diff(want, out.String()); diff != "" {
		t.Errorf("digest (-want +got):\n%s", diff)
	}
}

// TestDigestOfACascade: the e2e matrix's failure in CI. One subtest failed
// slowly and ran out the deadline its later siblings shared; they failed at
// once, all with the same line. The first failure ends the digest with its
// last keep lines; the echoes come before it, named together, with their
// last keepOthers.
func TestDigestOfACascade(t *testing.T) {
	var in strings.Builder
	in.WriteString("=== RUN   TestM\n=== RUN   TestM/slow\n")
	for i := range keep + 10 {
		fmt.Fprintf(&in, "    slow_test.go:1: waited %d\n", i)
	}
	in.WriteString("    slow_test.go:2: the taints never went\n")
	for _, name := range []string{"a", "b", "c"} {
		fmt.Fprintf(&in, "=== RUN   TestM/%s\n    m_test.go:9: context deadline exceeded\n", name)
	}
	in.WriteString("=== RUN   TestM/d\n")
	for i := range keepOthers + 2 {
		fmt.Fprintf(&in, "    d_test.go:1: d %d\n", i)
	}
	in.WriteString("--- FAIL: TestM (1.00s)\n")
	for _, name := range []string{"slow", "a", "b", "c", "d"} {
		fmt.Fprintf(&in, "    --- FAIL: TestM/%s (0.00s)\n", name)
	}
	var out strings.Builder
	if err := digest(strings.NewReader(in.String()), &out); err != nil {
		t.Fatal(err)
	}
	var want strings.Builder
	fmt.Fprintf(&want, "\nWhy each failed test failed, the first to fail last (its last %d lines, the others' last %d; the whole output is above):\n", keep, keepOthers)
	fmt.Fprintf(&want, "--- TestM/d\n    [… 2 lines before]\n")
	for i := 2; i < keepOthers+2; i++ {
		fmt.Fprintf(&want, "    d_test.go:1: d %d\n", i)
	}
	want.WriteString("--- TestM/a, TestM/b, TestM/c\n    m_test.go:9: context deadline exceeded\n")
	fmt.Fprintf(&want, "--- TestM/slow\n    [… 11 lines before]\n")
	for i := 11; i < keep+10; i++ {
		fmt.Fprintf(&want, "    slow_test.go:1: waited %d\n", i)
	}
	want.WriteString("    slow_test.go:2: the taints never went\n")
	if diff := cmp.Diff(want.String(), out.String()); diff != "" {
		t.Errorf("digest (-want +got):\n%s", diff)
	}
}

func TestDigestKeepsTheLastLines(t *testing.T) {
	var in strings.Builder
	in.WriteString("=== RUN   TestLong\n")
	for i := range keep + 5 {
		fmt.Fprintf(&in, "    line %d\n", i)
	}
	in.WriteString("--- FAIL: TestLong (0.00s)\n")
	var out strings.Builder
	if err := digest(strings.NewReader(in.String()), &out); err != nil {
		t.Fatal(err)
	}
	got := out.String()
	if !strings.Contains(got, "[… 5 lines before]") || strings.Contains(got, "    line 4\n") || !strings.Contains(got, fmt.Sprintf("    line %d\n", keep+4)) {
		t.Errorf("digest of a long test:\n%s", got)
	}
}

func TestDigestOfATimeout(t *testing.T) {
	in := "=== RUN   TestSlow\n    slow_test.go:1: waiting\npanic: test timed out after 20m0s\n\trunning tests:\n\t\tTestSlow (20m0s)\n"
	var out strings.Builder
	if err := digest(strings.NewReader(in), &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "--- the run panicked:\npanic: test timed out after 20m0s\n\trunning tests:\n\t\tTestSlow (20m0s)\n") {
		t.Errorf("digest of a timeout:\n%s", out.String())
	}
}

func TestNoDigestWhenNothingFailed(t *testing.T) {
	var out strings.Builder
	if err := digest(strings.NewReader("=== RUN   TestA\n--- PASS: TestA (0.00s)\nPASS\nok  \tx\t0.1s\n"), &out); err != nil {
		t.Fatal(err)
	}
	if out.Len() != 0 {
		t.Errorf("digest of a passing run: %q", out.String())
	}
}
