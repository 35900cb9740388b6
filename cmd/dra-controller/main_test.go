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
