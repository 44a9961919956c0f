// Package types is merlin's API: the protobuf messages and the gRPC service
// `types.Merlin`, wire-compatible with the original Merlin service. The Go
// code beside types.proto is generated (`make generate`) and committed.
// No privileges needed.
package types
