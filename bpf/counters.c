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

// Key kinds of real servers: how IPVS reaches them. VIP keys have kind 0.
#define KIND_NAT 1
#define KIND_TUNNEL 2

#define FAMILY_IPV4 4
#define FAMILY_IPV6 6

// One flow end: a VIP, or a real server as the forwarded packet names it.
// IPv4 keys are 8 bytes, so that hashing and comparing them is cheap.
struct key4 {
	__be32 addr;
	__be16 port;
	__u8 proto;
	__u8 kind;
};

struct key6 {
	__u8 addr[16];
	__be16 port;
	__u8 proto;
	__u8 kind;
};

// A direct-routing server: only its MAC names it in the forwarded packet.
struct mac_key {
	__u8 mac[6];
	__be16 port;
	__u8 proto;
	__u8 pad[3];
};

struct addr6 {
	__u8 addr[16];
};

struct counters {
	__u64 packets;
	__u64 bytes; // from the IP header on, as IPVS counts them
	__u64 syn;   // SYN without ACK: a new connection attempt
	__u64 synack;
	__u64 fin;
	__u64 rst;
};

// What XDP counts per VIP: half the size, so that the hot path touches less.
struct vip_counters {
	__u64 packets;
	__u64 bytes;
	__u64 syn;
};

// Sizes are placeholders: userspace sets max_entries from its configuration.
#define COUNTER_MAP(name, key_type, value_type)      \
	struct {                                       \
		__uint(type, BPF_MAP_TYPE_PERCPU_HASH);    \
		__type(key, key_type);                     \
		__type(value, value_type);                 \
		__uint(max_entries, 1);                    \
		__uint(pinning, LIBBPF_PIN_BY_NAME);       \
	} name SEC(".maps")

COUNTER_MAP(vips4, struct key4, struct vip_counters);
COUNTER_MAP(vips6, struct key6, struct vip_counters);
// Every VIP address; the value counts packets that matched no service.
COUNTER_MAP(unmatched4, __be32, struct vip_counters);
COUNTER_MAP(unmatched6, struct addr6, struct vip_counters);
COUNTER_MAP(forwarded4, struct key4, struct counters);
COUNTER_MAP(forwarded6, struct key6, struct counters);
COUNTER_MAP(forwarded_mac, struct mac_key, struct counters);
COUNTER_MAP(replies4, struct key4, struct counters);
COUNTER_MAP(replies6, struct key6, struct counters);

// The node's own addresses: replies to them answer the node's own sockets
// (health checks), not clients.
#define ADDR_SET(name, key_type)                     \
	struct {                                       \
		__uint(type, BPF_MAP_TYPE_HASH);           \
		__type(key, key_type);                     \
		__type(value, __u8);                       \
		__uint(max_entries, 1);                    \
		__uint(pinning, LIBBPF_PIN_BY_NAME);       \
	} name SEC(".maps")

ADDR_SET(locals4, __be32);
ADDR_SET(locals6, struct addr6);

union addr {
	__be32 v4;
	__u8 v6[16];
};

struct flow {
	union addr saddr;
	union addr daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 family;
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
	f->sport = f->dport = 0;
	f->tcp_flags = f->later_fragment = 0;
	if (ethertype == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = l3;
		if ((void *)(ip + 1) > end || ip->ihl < 5)
			return NULL;
		f->family = FAMILY_IPV4;
		f->saddr.v4 = ip->saddr;
		f->daddr.v4 = ip->daddr;
		f->proto = ip->protocol;
		f->len = bpf_ntohs(ip->tot_len);
		f->later_fragment = (ip->frag_off & bpf_htons(0x1fff)) != 0;
		return l3 + ip->ihl * 4;
	}
	if (ethertype == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = l3;
		if ((void *)(ip6 + 1) > end)
			return NULL;
		f->family = FAMILY_IPV6;
		__builtin_memcpy(f->saddr.v6, &ip6->saddr, 16);
		__builtin_memcpy(f->daddr.v6, &ip6->daddr, 16);
		f->proto = ip6->nexthdr;
		f->len = bpf_ntohs(ip6->payload_len) + sizeof(*ip6);
		return ip6 + 1;
	}
	return NULL;
}

// lookup finds the counters of an address:port:protocol of a kind in the
// map of its family.
static __always_inline void *lookup(void *map4, void *map6, __u8 family, union addr *a, __be16 port, __u8 proto, __u8 kind) {
	if (family == FAMILY_IPV4) {
		struct key4 k = {.addr = a->v4, .port = port, .proto = proto, .kind = kind};
		return bpf_map_lookup_elem(map4, &k);
	}
	struct key6 k = {.port = port, .proto = proto, .kind = kind};
	__builtin_memcpy(k.addr, a->v6, 16);
	return bpf_map_lookup_elem(map6, &k);
}

static __always_inline void *lookup_addr(void *map4, void *map6, __u8 family, union addr *a) {
	if (family == FAMILY_IPV4)
		return bpf_map_lookup_elem(map4, &a->v4);
	struct addr6 k;
	__builtin_memcpy(k.addr, a->v6, 16);
	return bpf_map_lookup_elem(map6, &k);
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

	struct vip_counters *c = lookup(&vips4, &vips6, f.family, &f.daddr, f.dport, f.proto, 0);
	if (!c)
		c = lookup_addr(&unmatched4, &unmatched6, f.family, &f.daddr);
	if (c) {
		c->packets++;
		c->bytes += f.len;
		if ((f.tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN)
			c->syn++;
	}
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
	struct counters *c;

	if (f.proto == IPPROTO_IPIP || f.proto == IPPROTO_IPV6) {
		// Tunnel: the outer destination is the real server; the inner
		// packet gives the service's port and the TCP flags.
		union addr outer = f.daddr;
		__u8 family = f.family;
		__u16 inner = f.proto == IPPROTO_IPIP ? bpf_htons(ETH_P_IP) : bpf_htons(ETH_P_IPV6);
		void *il4 = parse_ip(l4, end, inner, &f);
		if (!il4 || parse_l4(il4, end, &f) < 0)
			return TC_ACT_UNSPEC;
		c = lookup(&forwarded4, &forwarded6, family, &outer, f.dport, f.proto, KIND_TUNNEL);
		if (c)
			count(c, &f);
		return TC_ACT_UNSPEC;
	}
	if (parse_l4(l4, end, &f) < 0)
		return TC_ACT_UNSPEC;
	c = lookup(&forwarded4, &forwarded6, f.family, &f.daddr, f.dport, f.proto, KIND_NAT);
	if (!c) {
		// Direct routing: only the destination MAC names the real server.
		struct mac_key k = {.port = f.dport, .proto = f.proto};
		__builtin_memcpy(k.mac, eth->h_dest, ETH_ALEN);
		c = bpf_map_lookup_elem(&forwarded_mac, &k);
	}
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
	if (lookup_addr(&locals4, &locals6, f.family, &f.daddr))
		return TC_ACT_UNSPEC;
	struct counters *c = lookup(&replies4, &replies6, f.family, &f.saddr, f.sport, f.proto, KIND_NAT);
	if (c)
		count(c, &f);
	return TC_ACT_UNSPEC;
}
