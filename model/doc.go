// Package model is the vocabulary of merlin's API shared by the daemon and
// the CLI: validation and normalisation of services and servers (errors
// name the field, FieldError), the keys objects are known by, the
// effective configuration of a server (its service's defaults with its own
// settings over them) and the names of schedulers, flags and forwarding
// methods. It imports only the API types and the standard library, needs
// no privileges and builds on every OS.
package model
