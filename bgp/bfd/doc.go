// Package bfd is single-hop Bidirectional Forwarding Detection (RFC 5880,
// RFC 5881) in asynchronous mode, for the BGP sessions of a merlin node:
// a router that stops hearing this node — a dead host, a frozen one, a cut
// link — takes the node out of its ECMP within the detection time (300 ms ×
// 3 by default) instead of the BGP hold time.
//
// One goroutine owns every session (see Manager). Packets are accepted only
// from configured peers, with a TTL of 255 (RFC 5881 §5: a single-hop packet
// from farther away is forged) and a valid header; everything else is counted
// and dropped, so a hostile neighbour can cost a node one header check per
// packet. Authentication is not supported (packets asking for it are dropped).
//
// On a planned stop every session signals AdminDown (RFC 5882 §3.2), which
// routers take as "not a failure": with graceful restart they keep the routes.
//
// Privileges: none beyond UDP sockets (port 3784 is above 1024). Kernel:
// IP_RECVTTL / IPV6_RECVHOPLIMIT (Linux); other systems build the package
// but have no transport.
package bfd
