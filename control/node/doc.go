// Package node is the merlin node: a pure planner (plan*.go) that turns the
// desired state, health results and the node's ownership into a Plan, a
// runner (runner*.go) that owns time, goroutines, retries and status and
// hands each sink (sink_*.go) its part of the plan, node status published
// to the store, passive health, and the node's metrics. It reaches IPVS,
// health, BGP and the counters through small interfaces it declares. It
// needs no privileges itself; its IPVS and VIP sinks need CAP_NET_ADMIN.
package node
