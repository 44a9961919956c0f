// Package xdpstats counts a load balancer's traffic with eBPF: an XDP
// program on the ingress interfaces counts packets, bytes and new
// connection attempts per VIP:port:protocol (and traffic to a VIP that no
// service matches); TC programs on the backend interfaces count what IPVS
// forwarded to each real server (NAT by address:port, tunnel by outer
// destination, direct routing by MAC) and, for NAT, what came back.
//
// The programs only count (XDP_PASS, TC_ACT_UNSPEC); IPVS forwards. The
// caller owns every map key (Set takes the whole key set, level-triggered;
// Update a change of it, writing only those keys, so that one change costs
// the same at any size), so entries never go stale and a full map is an
// error, not a silent loss.
// Maps and links are pinned in bpffs: a restarted merlin keeps counting from
// where it was. Remove detaches everything and deletes the pins.
//
// It needs Linux with BPF, CAP_BPF/CAP_SYS_ADMIN, CAP_NET_ADMIN and a bpffs
// (mounted at /sys/fs/bpf if it is not). TC uses tcx on kernels that have
// it (6.6 and later) and a clsact qdisc otherwise. No BTF is needed: the
// programs read only packet data. Keys and counters (keys.go) are portable.
package xdpstats
