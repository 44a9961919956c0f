package ipvs

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Family is an address family: IPv4 or IPv6.
type Family uint16

// Address families, as Linux numbers them (AF_INET, AF_INET6).
const (
	IPv4 Family = 2
	IPv6 Family = 10
)

func (f Family) String() string {
	switch f {
	case IPv4:
		return "ipv4"
	case IPv6:
		return "ipv6"
	}
	return "family(" + strconv.Itoa(int(f)) + ")"
}

// familyOf returns the family of an address, 0 if it is invalid.
func familyOf(a netip.Addr) Family {
	switch {
	case a.Is4():
		return IPv4
	case a.Is6():
		return IPv6
	}
	return 0
}

// Protocol is the L4 protocol of an address service.
type Protocol uint16

// Protocols IPVS balances.
const (
	TCP  Protocol = 6   // IPPROTO_TCP
	UDP  Protocol = 17  // IPPROTO_UDP
	SCTP Protocol = 132 // IPPROTO_SCTP
)

func (p Protocol) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	case SCTP:
		return "sctp"
	case 0:
		return "none"
	}
	return "proto(" + strconv.Itoa(int(p)) + ")"
}

// ParseProtocol accepts tcp, udp and sctp in any case.
func ParseProtocol(s string) (Protocol, error) {
	switch strings.ToLower(s) {
	case "tcp":
		return TCP, nil
	case "udp":
		return UDP, nil
	case "sctp":
		return SCTP, nil
	}
	return 0, fmt.Errorf("unknown protocol %q (want tcp, udp or sctp)", s)
}

// ServiceKey identifies a virtual service: either address, port and protocol,
// or a firewall mark (with a family, as IPVS keeps fwmark services per family).
type ServiceKey struct {
	Family   Family // required for fwmark services; derived from Address otherwise
	Protocol Protocol
	Address  netip.Addr
	Port     uint16
	FWMark   uint32
}

// Canonical returns the key in the one form Diff and the kernel dump use:
// Family set, IPv4 addresses unmapped, address fields empty for fwmark keys.
func (k ServiceKey) Canonical() ServiceKey {
	if k.FWMark != 0 {
		return ServiceKey{Family: k.Family, FWMark: k.FWMark}
	}
	k.Address = k.Address.Unmap()
	k.Family = familyOf(k.Address)
	return k
}

func (k ServiceKey) String() string {
	if k.FWMark != 0 {
		return fmt.Sprintf("fwmark %d/%s", k.FWMark, k.Family)
	}
	return k.Protocol.String() + " " + netip.AddrPortFrom(k.Address.Unmap(), k.Port).String()
}

// ServiceFlags are the IPVS service flags.
type ServiceFlags uint32

// Service flags. The scheduler flags 1..3 have scheduler-specific names.
const (
	FlagPersistent ServiceFlags = 0x0001
	flagHashed     ServiceFlags = 0x0002 // kernel-internal, never written or reported
	FlagOnePacket  ServiceFlags = 0x0004
	FlagSched1     ServiceFlags = 0x0008
	FlagSched2     ServiceFlags = 0x0010
	FlagSched3     ServiceFlags = 0x0020

	FlagSHFallback = FlagSched1 // sh: fall back to another server if the chosen one is unavailable
	FlagSHPort     = FlagSched2 // sh: hash the source port too
	FlagMHFallback = FlagSched1 // mh: fall back like sh-fallback
	FlagMHPort     = FlagSched2 // mh: hash the source port too
)

var flagNames = []struct {
	flag ServiceFlags
	name string
}{
	{FlagPersistent, "persistent"}, {FlagOnePacket, "one-packet"},
	{FlagSched1, "flag-1"}, {FlagSched2, "flag-2"}, {FlagSched3, "flag-3"},
}

func (f ServiceFlags) String() string {
	var names []string
	for _, n := range flagNames {
		if f&n.flag != 0 {
			names = append(names, n.name)
			f &^= n.flag
		}
	}
	if f != 0 {
		names = append(names, fmt.Sprintf("0x%x", uint32(f)))
	}
	return strings.Join(names, ",")
}

// ParseServiceFlag maps one flag name to its bit: persistent, one-packet
// (or ops), flag-1..3, and the scheduler names sh-fallback, sh-port,
// mh-fallback, mh-port.
func ParseServiceFlag(name string) (ServiceFlags, error) {
	switch strings.ToLower(name) {
	case "persistent":
		return FlagPersistent, nil
	case "one-packet", "ops", "onepacket":
		return FlagOnePacket, nil
	case "flag-1", "sh-fallback", "mh-fallback":
		return FlagSched1, nil
	case "flag-2", "sh-port", "mh-port":
		return FlagSched2, nil
	case "flag-3":
		return FlagSched3, nil
	}
	return 0, fmt.Errorf("unknown service flag %q", name)
}

// ServiceConfig is everything about a service that can change in place.
type ServiceConfig struct {
	Scheduler string // rr, wrr, lc, wlc, lblc, lblcr, dh, sh, sed, nq, fo, ovf, mh, ...
	Flags     ServiceFlags
	// Timeout is the persistence timeout in seconds (used with FlagPersistent).
	Timeout uint32
	// NetmaskBits is the persistence granularity as a prefix length; 0 means
	// the whole address (32 for IPv4, 128 for IPv6), which is the kernel's default.
	NetmaskBits uint8
	// PersistenceEngine names an optional persistence engine ("sip").
	PersistenceEngine string
}

// Service is a virtual service: its identity and its configuration.
type Service struct {
	Key    ServiceKey
	Config ServiceConfig
}

// ForwardMethod is how IPVS sends packets to a destination.
type ForwardMethod uint32

// Forwarding methods (IP_VS_CONN_F_*).
const (
	Masquerade  ForwardMethod = 0 // NAT
	LocalNode   ForwardMethod = 1
	Tunnel      ForwardMethod = 2 // IP-in-IP, GUE or GRE
	DirectRoute ForwardMethod = 3 // DR, "gatewaying"
	Bypass      ForwardMethod = 4

	forwardMask ForwardMethod = 7
)

func (m ForwardMethod) String() string {
	switch m {
	case Masquerade:
		return "masq"
	case LocalNode:
		return "local"
	case Tunnel:
		return "tunnel"
	case DirectRoute:
		return "route"
	case Bypass:
		return "bypass"
	}
	return "forward(" + strconv.Itoa(int(m)) + ")"
}

// TunnelType is the encapsulation of the Tunnel forwarding method.
type TunnelType uint8

// Tunnel encapsulations (IP_VS_CONN_F_TUNNEL_TYPE_*).
const (
	TunnelIPIP TunnelType = 0
	TunnelGUE  TunnelType = 1
	TunnelGRE  TunnelType = 2
)

func (t TunnelType) String() string {
	switch t {
	case TunnelIPIP:
		return "ipip"
	case TunnelGUE:
		return "gue"
	case TunnelGRE:
		return "gre"
	}
	return "tunnel(" + strconv.Itoa(int(t)) + ")"
}

// TunnelFlags are the checksum options of GUE/GRE tunnels.
type TunnelFlags uint16

// Tunnel flags (IP_VS_TUNNEL_ENCAP_FLAG_*).
const (
	TunnelChecksum       TunnelFlags = 1 << 0
	TunnelRemoteChecksum TunnelFlags = 1 << 1
)

// DestinationKey identifies a real server within its service. The address
// family of a destination may differ from its service's (tunnel only).
type DestinationKey struct {
	Address netip.Addr
	Port    uint16
}

func (k DestinationKey) String() string {
	return netip.AddrPortFrom(k.Address.Unmap(), k.Port).String()
}

// DestinationConfig is everything about a destination that can change in place.
type DestinationConfig struct {
	Weight         uint32 // 0 drains: existing connections continue, no new ones
	Forward        ForwardMethod
	UpperThreshold uint32 // connection limit; 0 means none
	LowerThreshold uint32
	TunnelType     TunnelType  // Tunnel only
	TunnelPort     uint16      // GUE only
	TunnelFlags    TunnelFlags // GUE/GRE only
}

// Destination is a real server of a service.
type Destination struct {
	Key    DestinationKey
	Config DestinationConfig
}

// Stats are the kernel's 64-bit counters and rate estimates.
type Stats struct {
	Connections uint64
	InPackets   uint64
	OutPackets  uint64
	InBytes     uint64
	OutBytes    uint64
	CPS         uint64 // connections per second (estimator)
	InPPS       uint64
	OutPPS      uint64
	InBPS       uint64
	OutBPS      uint64
}

// ServiceStatus is a service as the kernel reports it.
type ServiceStatus struct {
	Service
	Stats Stats
}

// DestinationStatus is a destination as the kernel reports it.
type DestinationStatus struct {
	Destination
	ActiveConnections     uint32
	InactiveConnections   uint32
	PersistentConnections uint32
	Stats                 Stats
}

// VirtualServer is a service with its destinations: the unit of Diff.
type VirtualServer struct {
	Service      Service
	Destinations []Destination
}

// Info is what IPVS says about itself.
type Info struct {
	Version       string // e.g. 1.2.1
	ConnTableSize uint32
}

// Timeouts are the global connection timeouts in seconds; 0 in SetTimeouts
// leaves a value unchanged.
type Timeouts struct {
	TCP    uint32
	TCPFin uint32
	UDP    uint32
}
