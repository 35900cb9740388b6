// Package claims is product code that builds on a test helper.
package claims

import "github.com/tessera-gpu/tessera/internal/testing/builder" // want test-helpers

// Default is a claim built by a test helper.
var Default = builder.Claim("default")
