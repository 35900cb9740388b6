// Command testdigest reads the output of go test -v and prints, for every
// test that failed, the lines that test printed: make test's stages run it
// on a failed stage's output, so that the end of a long CI log says why each
// test failed, whatever was cut from its middle.
//
//	testdigest FILE
package main

import (
	"bufio"
	"bytes"
	"cmp"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"
)

// keep is how many of its last lines the digest prints of the test that
// failed first, and keepOthers of each other: in a log cut to its tail, the
// first failure is the likeliest cause, and the later ones are often its
// echo (a shared deadline run out).
const (
	keep       = 40
	keepOthers = 6
)

var (
	// A test's own lines follow "=== RUN", "=== CONT" or "=== NAME" with its
	// name (go test -v streams them as they are logged).
	heading = regexp.MustCompile(`^=== (?:RUN|CONT|NAME)\s+(\S+)`)
	result  = regexp.MustCompile(`^\s*--- (FAIL|PASS|SKIP): (\S+) \(`)
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: testdigest FILE (the output of go test -v)")
		os.Exit(2)
	}
	out, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := digest(bytes.NewReader(out), os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// digest writes to w why each test that failed in r failed: its own last
// lines. A test that failed only through its subtests (it printed nothing of
// its own) is left to them, and tests that printed the same lines are named
// together. The test that failed first (whose last line came first) ends the
// digest with its last keep lines, nearest the end of a cut log; the others
// come before it, latest first, with their last keepOthers. A run that
// panicked, as go test does when its -timeout passes, gets the panic's lines
// last.
func digest(r io.Reader, w io.Writer) error {
	lines := map[string][]string{}
	last := map[string]int{} // a test's last own line's number
	var current string
	var failed []string
	var panicked []string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 4*1024*1024)
	for n := 0; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case panicked != nil:
			panicked = append(panicked, line)
		case strings.HasPrefix(line, "panic: "):
			panicked = []string{line}
		case heading.MatchString(line):
			current = heading.FindStringSubmatch(line)[1]
		case result.MatchString(line):
			if m := result.FindStringSubmatch(line); m[1] == "FAIL" {
				failed = append(failed, m[2])
			}
			// What follows, up to the next heading, is go test's own
			// (FAIL, ok, the package's summary), not the test's.
			current = ""
		case strings.HasPrefix(line, "=== "):
			// PAUSE: the test's lines come after its CONT.
		case current != "":
			lines[current] = append(lines[current], line)
			last[current] = n
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if len(failed) == 0 && panicked == nil {
		return nil
	}

	type group struct {
		names []string
		own   []string
		last  int
	}
	var groups []*group
	byLines := map[string]*group{}
	for _, name := range failed {
		own := lines[name]
		if len(own) == 0 {
			continue
		}
		key := strings.Join(own, "\n")
		g := byLines[key]
		if g == nil {
			g = &group{own: own, last: last[name]}
			byLines[key] = g
			groups = append(groups, g)
		}
		g.names = append(g.names, name)
		g.last = min(g.last, last[name])
	}
	slices.SortStableFunc(groups, func(a, b *group) int { return cmp.Compare(b.last, a.last) })

	var b strings.Builder
	if len(groups) > 0 {
		fmt.Fprintf(&b, "\nWhy each failed test failed, the first to fail last (its last %d lines, the others' last %d; the whole output is above):\n", keep, keepOthers)
	}
	for i, g := range groups {
		n := keepOthers
		if i == len(groups)-1 {
			n = keep
		}
		fmt.Fprintf(&b, "--- %s\n", strings.Join(g.names, ", "))
		own := g.own
		if len(own) > n {
			fmt.Fprintf(&b, "    [… %d lines before]\n", len(own)-n)
			own = own[len(own)-n:]
		}
		for _, l := range own {
			fmt.Fprintln(&b, l)
		}
	}
	if panicked != nil {
		fmt.Fprintln(&b, "--- the run panicked:")
		if len(panicked) > keep {
			panicked = panicked[:keep]
		}
		for _, l := range panicked {
			fmt.Fprintln(&b, l)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}
