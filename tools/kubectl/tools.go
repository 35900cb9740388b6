//go:build tools

// Package tools records the kubectl that hack/go-tool.sh builds, so that go mod
// tidy keeps its dependencies in go.sum.
package tools

import _ "k8s.io/kubernetes/cmd/kubectl"
