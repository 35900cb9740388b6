// Package version is an API package of its own; the wire contract must not import it.
package version

// Version is the API version.
const Version = "v1"
