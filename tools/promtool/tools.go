//go:build tools

// Package tools pins promtool, Prometheus's rule tester, which the chart's
// recording-rule tests run (`promtool test rules`).
package tools

import _ "github.com/prometheus/prometheus/cmd/promtool"
