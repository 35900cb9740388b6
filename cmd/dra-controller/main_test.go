package main

import (
	"context"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

func TestBadUntenantedIsRefused(t *testing.T) {
	err := run(context.Background(), []string{"--untenanted=maybe"})
	if err == nil || !strings.Contains(err.Error(), `untenanted must be "allow" or "deny", not "maybe"`) {
		t.Fatalf("error = %v", err)
	}
}

func TestNonPositiveRateIsRefused(t *testing.T) {
	for _, args := range [][]string{{"--kube-api-qps=0"}, {"--kube-api-burst=-1"}} {
		err := run(context.Background(), args)
		if err == nil || !strings.Contains(err.Error(), "must be positive") {
			t.Errorf("%v: error = %v", args, err)
		}
	}
}

// The controller's /metrics lists every tenant's budget and usage: secure
// unless told otherwise.
func TestMetricsSecureByDefault(t *testing.T) {
	for name, tc := range map[string]struct {
		args   []string
		secure bool
	}{
		"default": {secure: true},
		"plain":   {args: []string{"--metrics-secure=false"}, secure: false},
	} {
		t.Run(name, func(t *testing.T) {
			o := &options{}
			fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
			o.addFlags(fs)
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			if o.metricsSecure != tc.secure {
				t.Errorf("secure metrics = %v, want %v", o.metricsSecure, tc.secure)
			}
		})
	}
}
