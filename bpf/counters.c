// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// merlin's traffic counters. They only count: every program lets the packet
// through unchanged, IPVS does the forwarding.
//
//   count_vips (XDP, ingress)   per VIP:port:protocol packets, bytes, SYNs;
//                               packets to a VIP on a port no service has.
//   count_forwarded (TC egress) per real server what IPVS forwarded to it:
//                               NAT by destination address:port, tunnel by
//                               outer destination, direct routing by MAC.
//   count_replies (TC ingress)  per NAT real server what came back from it.
//
// Userspace owns every key (the plan's); the programs never insert, so a
// full map cannot lose a key silently and no entry goes stale. Per-CPU maps:
// no atomics on the hot path.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

char __license[] SEC("license") = "Dual BSD/GPL";

// Key kinds: the address family, and for real servers how IPVS reaches them.
#define KIND_IPV4 4
#define KIND_IPV6 6
#define KIND_NAT 0x10
#define KIND_TUNNEL 0x20
#define KIND_ROUTE 0x30 // addr holds the server's MAC address

// One flow end: a VIP, or a real server as the forwarded packet names it.
struct key {
	__u8 addr[16];
	__be16 port;
	__u8 proto;
	__u8 kind;
};

// An address alone: a VIP (for unmatched traffic) or a local address.
struct addr_key {
	__u8 addr[16];
	__u8 kind;
	__u8 pad[3];
};

struct counters {
	__u64 packets;
	__u64 bytes; // from the IP header on, as IPVS counts them
	__u64 syn;   // SYN without ACK: a new connection attempt
	__u64 synack;
	__u64 fin;
	__u64 rst;
};

// Sizes are placeholders: userspace sets max_entries from its configuration.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, struct key);
	__type(value, struct counters);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} vips SEC(".maps");

// Every VIP address; the value counts packets that matched no service.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, struct addr_key);
	__type(value, struct counters);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} unmatched SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, struct key);
	__type(value, struct counters);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} forwarded SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, struct key);
	__type(value, struct counters);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} replies SEC(".maps");

// The node's own addresses: replies to them answer the node's own sockets
// (health checks), not clients.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct addr_key);
	__type(value, __u8);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} locals SEC(".maps");

struct flow {
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 family; // KIND_IPV4 or KIND_IPV6
	__u8 tcp_flags;
	__u8 later_fragment; // no L4 header
	__u32 len;           // from the IP header on
};

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

// parse_l4 reads the ports and TCP flags of TCP, UDP and SCTP (whose ports
// sit where TCP's do); other protocols count with port 0.
static __always_inline int parse_l4(void *l4, void *end, struct flow *f) {
	if (f->later_fragment)
		return 0;
	if (f->proto != IPPROTO_TCP && f->proto != IPPROTO_UDP && f->proto != IPPROTO_SCTP)
		return 0;
	__be16 *ports = l4;
	if ((void *)(ports + 2) > end)
		return -1;
	f->sport = ports[0];
	f->dport = ports[1];
	if (f->proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;
		if ((void *)(th + 1) > end)
			return -1;
		f->tcp_flags = ((__u8 *)th)[13];
	}
	return 0;
}

// parse_ip reads an IPv4 or IPv6 header at l3 and returns where its payload
// starts, or NULL if the packet is too short or not IP.
static __always_inline void *parse_ip(void *l3, void *end, __u16 ethertype, struct flow *f) {
	if (ethertype == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = l3;
		if ((void *)(ip + 1) > end || ip->ihl < 5)
			return NULL;
		__builtin_memset(f, 0, sizeof(*f));
		f->family = KIND_IPV4;
		__builtin_memcpy(f->saddr, &ip->saddr, 4);
		__builtin_memcpy(f->daddr, &ip->daddr, 4);
		f->proto = ip->protocol;
		f->len = bpf_ntohs(ip->tot_len);
		f->later_fragment = (ip->frag_off & bpf_htons(0x1fff)) != 0;
		return l3 + ip->ihl * 4;
	}
	if (ethertype == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = l3;
		if ((void *)(ip6 + 1) > end)
			return NULL;
		__builtin_memset(f, 0, sizeof(*f));
		f->family = KIND_IPV6;
		__builtin_memcpy(f->saddr, &ip6->saddr, 16);
		__builtin_memcpy(f->daddr, &ip6->daddr, 16);
		f->proto = ip6->nexthdr;
		f->len = bpf_ntohs(ip6->payload_len) + sizeof(*ip6);
		return ip6 + 1;
	}
	return NULL;
}

static __always_inline void count(struct counters *c, struct flow *f) {
	c->packets++;
	c->bytes += f->len;
	__u8 fl = f->tcp_flags;
	if ((fl & (TCP_SYN | TCP_ACK)) == TCP_SYN)
		c->syn++;
	if ((fl & (TCP_SYN | TCP_ACK)) == (TCP_SYN | TCP_ACK))
		c->synack++;
	if (fl & TCP_FIN)
		c->fin++;
	if (fl & TCP_RST)
		c->rst++;
}

SEC("xdp")
int count_vips(struct xdp_md *ctx) {
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return XDP_PASS;
	__u16 ethertype = eth->h_proto;
	void *l3 = eth + 1;
	if (ethertype == bpf_htons(ETH_P_8021Q) || ethertype == bpf_htons(ETH_P_8021AD)) {
		__be16 *vlan = l3;
		if ((void *)(vlan + 2) > end)
			return XDP_PASS;
		ethertype = vlan[1];
		l3 = vlan + 2;
	}
	struct flow f;
	void *l4 = parse_ip(l3, end, ethertype, &f);
	if (!l4 || parse_l4(l4, end, &f) < 0)
		return XDP_PASS;

	struct key k = {.port = f.dport, .proto = f.proto, .kind = f.family};
	__builtin_memcpy(k.addr, f.daddr, 16);
	struct counters *c = bpf_map_lookup_elem(&vips, &k);
	if (c) {
		count(c, &f);
		return XDP_PASS;
	}
	struct addr_key a = {.kind = f.family};
	__builtin_memcpy(a.addr, f.daddr, 16);
	c = bpf_map_lookup_elem(&unmatched, &a);
	if (c)
		count(c, &f);
	return XDP_PASS;
}

// parse_skb reads the outer flow of a packet at TC and returns where the IP
// payload starts (NULL: not IP).
static __always_inline void *parse_skb(struct __sk_buff *skb, struct flow *f, struct ethhdr **eth) {
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	*eth = data;
	if ((void *)(*eth + 1) > end)
		return NULL;
	return parse_ip(*eth + 1, end, (*eth)->h_proto, f);
}

SEC("tc")
int count_forwarded(struct __sk_buff *skb) {
	// A packet from a local socket (health checks, the node's own traffic)
	// was not forwarded by IPVS.
	if (skb->sk)
		return TC_ACT_UNSPEC;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth;
	struct flow f;
	void *l4 = parse_skb(skb, &f, &eth);
	if (!l4)
		return TC_ACT_UNSPEC;
	struct key k = {};
	struct counters *c;

	if (f.proto == IPPROTO_IPIP || f.proto == IPPROTO_IPV6) {
		// Tunnel: the outer destination is the real server; the inner
		// packet gives the service's port and the TCP flags.
		__u8 outer[16];
		__u8 family = f.family;
		__builtin_memcpy(outer, f.daddr, 16);
		__u16 inner = f.proto == IPPROTO_IPIP ? bpf_htons(ETH_P_IP) : bpf_htons(ETH_P_IPV6);
		void *il4 = parse_ip(l4, end, inner, &f);
		if (!il4 || parse_l4(il4, end, &f) < 0)
			return TC_ACT_UNSPEC;
		__builtin_memcpy(k.addr, outer, 16);
		k.port = f.dport;
		k.proto = f.proto;
		k.kind = KIND_TUNNEL | family;
		c = bpf_map_lookup_elem(&forwarded, &k);
		if (c)
			count(c, &f);
		return TC_ACT_UNSPEC;
	}
	if (parse_l4(l4, end, &f) < 0)
		return TC_ACT_UNSPEC;
	__builtin_memcpy(k.addr, f.daddr, 16);
	k.port = f.dport;
	k.proto = f.proto;
	k.kind = KIND_NAT | f.family;
	c = bpf_map_lookup_elem(&forwarded, &k);
	if (c) {
		count(c, &f);
		return TC_ACT_UNSPEC;
	}
	// Direct routing: only the destination MAC names the real server.
	__builtin_memset(k.addr, 0, 16);
	__builtin_memcpy(k.addr, eth->h_dest, ETH_ALEN);
	k.kind = KIND_ROUTE;
	c = bpf_map_lookup_elem(&forwarded, &k);
	if (c)
		count(c, &f);
	return TC_ACT_UNSPEC;
}

SEC("tc")
int count_replies(struct __sk_buff *skb) {
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth;
	struct flow f;
	void *l4 = parse_skb(skb, &f, &eth);
	if (!l4 || parse_l4(l4, end, &f) < 0)
		return TC_ACT_UNSPEC;
	struct addr_key a = {.kind = f.family};
	__builtin_memcpy(a.addr, f.daddr, 16);
	if (bpf_map_lookup_elem(&locals, &a))
		return TC_ACT_UNSPEC;
	struct key k = {.port = f.sport, .proto = f.proto, .kind = KIND_NAT | f.family};
	__builtin_memcpy(k.addr, f.saddr, 16);
	struct counters *c = bpf_map_lookup_elem(&replies, &k);
	if (c)
		count(c, &f);
	return TC_ACT_UNSPEC;
}
