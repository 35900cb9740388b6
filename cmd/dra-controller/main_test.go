package main

import (
	"context"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/tessera-gpu/tessera/internal/controller"
)

func TestBadUntenantedIsRefused(t *testing.T) {
	err := run(context.Background(), []string{"--untenanted=maybe"})
	if err == nil || !strings.Contains(err.Error(), `untenanted must be "allow" or "deny", not "maybe"`) {
		t.Fatalf("error = %v", err)
	}
}

func TestNonPositiveRateIsRefused(t *testing.T) {
	for _, args := range [][]string{{"--kube-api-qps=0"}, {"--kube-api-burst=-1"}, {"--idle-sync-interval=0s"}} {
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

// The admission queue is fair unless a benchmark asks for the FIFO.
func TestAdmissionQueueFlag(t *testing.T) {
	for name, tc := range map[string]struct {
		args []string
		want controller.QueueOrder
		err  string
	}{
		"default": {want: controller.QueueFair},
		"fifo":    {args: []string{"--admission-queue=fifo"}, want: controller.QueueFIFO},
		"bad":     {args: []string{"--admission-queue=lifo"}, err: `admission queue must be "fair" or "fifo", not "lifo"`},
	} {
		t.Run(name, func(t *testing.T) {
			o := &options{}
			fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
			o.addFlags(fs)
			err := fs.Parse(tc.args)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if o.controller.AdmissionQueue != tc.want {
				t.Errorf("admission queue = %q, want %q", o.controller.AdmissionQueue, tc.want)
			}
		})
	}
}
