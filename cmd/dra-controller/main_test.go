package main

import (
	"context"
	"strings"
	"testing"
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
