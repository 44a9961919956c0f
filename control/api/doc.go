// Package api is merlin's gRPC service types.Merlin on top of the store:
// the handlers, the interceptors (roles, audit, limits, request decoding,
// panics), the mapping of store errors to gRPC codes, and the Watch stream
// with its bounded send queue. It never imports the node; node statistics
// reach it through the StatsSource interface it declares. It needs no
// privileges.
package api
