package plugin_test

import (
	"slices"
	"strings"
)

func contains(s, sub string) bool { return strings.Contains(s, sub) }

func sorted(in []string) []string {
	out := slices.Clone(in)
	slices.Sort(out)
	return out
}
