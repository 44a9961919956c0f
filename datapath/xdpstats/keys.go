package xdpstats

import (
	"fmt"
	"net"
	"net/netip"
)

// Protocols, as in the IP header.
const (
	TCP  uint8 = 6
	UDP  uint8 = 17
	SCTP uint8 = 132
)

// Method is how IPVS reaches a real server, which decides what names the
// server in the forwarded packet.
type Method uint8

// Forwarding methods the TC program tells apart.
const (
	NAT    Method = 1 // destination address and port after IPVS
	Tunnel Method = 2 // outer destination (IPIP), inner destination port
	Route  Method = 3 // destination MAC address, the VIP's port
)

func (m Method) String() string {
	switch m {
	case NAT:
		return "nat"
	case Tunnel:
		return "tunnel"
	case Route:
		return "route"
	}
	return fmt.Sprintf("method(%d)", m)
}

// VIPKey is one service as the XDP program sees it arrive.
type VIPKey struct {
	Addr  netip.Addr
	Port  uint16
	Proto uint8
}

func (k VIPKey) String() string {
	return fmt.Sprintf("%s/%d", netip.AddrPortFrom(k.Addr, k.Port), k.Proto)
}

// ServerKey is one real server of one service as the TC program sees the
// packets IPVS forwards to it. Port is the server's port for NAT and the
// VIP's port for tunnel and direct routing (whose packets keep it).
type ServerKey struct {
	Method Method
	Addr   netip.Addr
	Port   uint16
	Proto  uint8
}

func (k ServerKey) String() string {
	return fmt.Sprintf("%s %s/%d", k.Method, netip.AddrPortFrom(k.Addr, k.Port), k.Proto)
}

// Keys is everything to count: Set makes the maps hold exactly these.
type Keys struct {
	VIPs    []VIPKey
	Servers []ServerKey
}

// Counters are what a program counted for one key, summed over CPUs.
type Counters struct {
	Packets uint64
	Bytes   uint64 // from the IP header on, as IPVS counts
	SYN     uint64 // SYN without ACK: connection attempts
	SYNACK  uint64
	FIN     uint64
	RST     uint64
}

func (c *Counters) add(o countersCounters) {
	c.Packets += o.Packets
	c.Bytes += o.Bytes
	c.SYN += o.Syn
	c.SYNACK += o.Synack
	c.FIN += o.Fin
	c.RST += o.Rst
}

// Snapshot is every counter at one moment.
type Snapshot struct {
	VIPs      map[VIPKey]Counters
	Unmatched map[netip.Addr]Counters // per VIP address, traffic no service matched
	Forwarded map[ServerKey]Counters  // to each real server
	Replies   map[ServerKey]Counters  // from each NAT real server
}

// Key kinds, as in bpf/counters.c.
const (
	kindIPv4  = 4
	kindIPv6  = 6
	kindRoute = 0x30
)

func familyKind(a netip.Addr) uint8 {
	if a.Is4() {
		return kindIPv4
	}
	return kindIPv6
}

func putAddr(dst *[16]uint8, a netip.Addr) {
	if a.Is4() {
		b := a.As4()
		copy(dst[:], b[:])
		return
	}
	*dst = a.As16()
}

func getAddr(src [16]uint8, kind uint8) netip.Addr {
	if kind&0x0f == kindIPv4 {
		return netip.AddrFrom4([4]byte(src[:4]))
	}
	return netip.AddrFrom16(src)
}

// htons: the programs compare ports in network order.
func htons(p uint16) uint16 { return p<<8 | p>>8 }

func vipKey(k VIPKey) countersKey {
	a := k.Addr.Unmap()
	ck := countersKey{Port: htons(k.Port), Proto: k.Proto, Kind: familyKind(a)}
	putAddr(&ck.Addr, a)
	return ck
}

func fromVIPKey(ck countersKey) VIPKey {
	return VIPKey{Addr: getAddr(ck.Addr, ck.Kind), Port: htons(ck.Port), Proto: ck.Proto}
}

func addrKey(a netip.Addr) countersAddrKey {
	a = a.Unmap()
	ak := countersAddrKey{Kind: familyKind(a)}
	putAddr(&ak.Addr, a)
	return ak
}

// serverKey is the map key of a NAT or tunnel server; direct-routing
// servers are keyed by MAC (routeKey).
func serverKey(k ServerKey) countersKey {
	a := k.Addr.Unmap()
	ck := countersKey{Port: htons(k.Port), Proto: k.Proto, Kind: uint8(k.Method)<<4 | familyKind(a)}
	putAddr(&ck.Addr, a)
	return ck
}

func routeKey(mac net.HardwareAddr, port uint16, proto uint8) countersKey {
	ck := countersKey{Port: htons(port), Proto: proto, Kind: kindRoute}
	copy(ck.Addr[:], mac)
	return ck
}
