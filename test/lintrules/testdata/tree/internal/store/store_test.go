package store

import (
	"testing"

	"github.com/tessera-gpu/tessera/internal/testing/builder"
)

// A test of product code may use the test helpers.
func TestName(t *testing.T) {
	if got := builder.Claim(Name); got != "claim/store" {
		t.Errorf("builder.Claim(%q) = %q", Name, got)
	}
}
