// Package control is merlin's control plane: the desired state in etcd
// (Store, State, Watcher), the gRPC API (Server), and the node pipeline —
// a pure planner (plan*.go) that turns the desired state, health results
// and the node's ownership into a Plan, and a runner (runner*.go) that owns
// time, goroutines, retries and status and hands each sink (sink_*.go) its
// part of the plan. Validation and the API vocabulary are in package model.
// It needs no privileges itself; its IPVS and VIP sinks need CAP_NET_ADMIN.
// It needs an etcd (a real cluster, or the embedded server of etcdembed).
package control
