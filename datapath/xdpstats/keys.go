package xdpstats

import (
	"encoding/binary"
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

func (c *Counters) addVIP(o countersVipCounters) {
	c.Packets += o.Packets
	c.Bytes += o.Bytes
	c.SYN += o.Syn
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

// Visit receives the counters of a read, one key at a time; a nil
// function skips that role (its maps are not read).
type Visit struct {
	VIP       func(VIPKey, Counters)
	Unmatched func(netip.Addr, Counters) // per VIP address, traffic no service matched
	Forwarded func(ServerKey, Counters)
	Reply     func(ServerKey, Counters)
}

// visit fills s.
func (s Snapshot) visit() Visit {
	return Visit{
		VIP:       func(k VIPKey, c Counters) { s.VIPs[k] = c },
		Unmatched: func(a netip.Addr, c Counters) { s.Unmatched[a] = c },
		Forwarded: func(k ServerKey, c Counters) { s.Forwarded[k] = c },
		Reply:     func(k ServerKey, c Counters) { s.Replies[k] = c },
	}
}

// Each hands s's counters to v as a read would (for fakes of a Counter).
func (s Snapshot) Each(v Visit) {
	each(s.VIPs, v.VIP)
	each(s.Unmatched, v.Unmatched)
	each(s.Forwarded, v.Forwarded)
	each(s.Replies, v.Reply)
}

func each[K comparable](m map[K]Counters, fn func(K, Counters)) {
	if fn == nil {
		return
	}
	for k, c := range m {
		fn(k, c)
	}
}

// Key kinds of real servers, as in bpf/counters.c (VIP keys have 0).
const (
	kindNAT    = 1
	kindTunnel = 2
)

// be16 and be32 hold network-order bytes in the host-order integers the
// generated key types have.
func be16(p uint16) uint16 { return binary.NativeEndian.Uint16(binary.BigEndian.AppendUint16(nil, p)) }

func fromBE16(v uint16) uint16 {
	return binary.BigEndian.Uint16(binary.NativeEndian.AppendUint16(nil, v))
}

func be32(a netip.Addr) uint32 { b := a.As4(); return binary.NativeEndian.Uint32(b[:]) }

func fromBE32(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte(binary.NativeEndian.AppendUint32(nil, v)))
}

// mapKey is a key of the IPv4 or the IPv6 map of a role.
type mapKey struct {
	v4   countersKey4
	v6   countersKey6
	is4  bool
	zero bool // invalid address
}

func keyOf(a netip.Addr, port uint16, proto, kind uint8) mapKey {
	a = a.Unmap()
	switch {
	case a.Is4():
		return mapKey{v4: countersKey4{Addr: be32(a), Port: be16(port), Proto: proto, Kind: kind}, is4: true}
	case a.Is6():
		return mapKey{v6: countersKey6{Addr: a.As16(), Port: be16(port), Proto: proto, Kind: kind}}
	}
	return mapKey{zero: true}
}

func vipOf4(k countersKey4) VIPKey {
	return VIPKey{Addr: fromBE32(k.Addr), Port: fromBE16(k.Port), Proto: k.Proto}
}

func vipOf6(k countersKey6) VIPKey {
	return VIPKey{Addr: netip.AddrFrom16(k.Addr), Port: fromBE16(k.Port), Proto: k.Proto}
}

func serverOf4(k countersKey4) ServerKey {
	return ServerKey{Method: methodOf(k.Kind), Addr: fromBE32(k.Addr), Port: fromBE16(k.Port), Proto: k.Proto}
}

func serverOf6(k countersKey6) ServerKey {
	return ServerKey{Method: methodOf(k.Kind), Addr: netip.AddrFrom16(k.Addr), Port: fromBE16(k.Port), Proto: k.Proto}
}

func methodOf(kind uint8) Method {
	if kind == kindTunnel {
		return Tunnel
	}
	return NAT
}

func routeKey(mac net.HardwareAddr, port uint16, proto uint8) countersMacKey {
	k := countersMacKey{Port: be16(port), Proto: proto}
	copy(k.Mac[:], mac)
	return k
}
