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
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
)

// keep is how many of a failed test's last lines the digest prints.
const keep = 40

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

// digest writes to w, for each test that failed in r, its last keep lines;
// a test that failed only through its subtests (it printed nothing of its
// own) is left to them. A run that panicked, as go test does when its
// -timeout passes, gets the panic's lines too.
func digest(r io.Reader, w io.Writer) error {
	lines := map[string][]string{}
	var current string
	var failed []string
	var panicked []string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 4*1024*1024)
	for sc.Scan() {
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
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if len(failed) == 0 && panicked == nil {
		return nil
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\nWhy each failed test failed (its last %d lines; the whole output is above):\n", keep)
	for _, name := range failed {
		own := lines[name]
		if len(own) == 0 {
			continue
		}
		fmt.Fprintf(&b, "--- %s\n", name)
		if len(own) > keep {
			fmt.Fprintf(&b, "    [… %d lines before]\n", len(own)-keep)
			own = own[len(own)-keep:]
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
