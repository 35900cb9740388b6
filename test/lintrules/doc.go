// Package lintrules proves the structural rules of .golangci.yml: its test runs the
// project's pinned golangci-lint over a small tree in testdata/tree that breaks each
// depguard rule at least once (and keeps to them elsewhere), and checks that exactly the marked
// imports are reported, each by the rule that forbids it.
package lintrules
