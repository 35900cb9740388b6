// Package store is a private package that pkg/ and api/ must not import.
package store

// Name is a private name.
const Name = "store"
