// Package builder is a test helper, kept in internal/ so that research code can use it too.
package builder

// Claim names a claim as tests build it.
func Claim(name string) string { return "claim/" + name }
