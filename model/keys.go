package model

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/merlin-ipvs/merlin/types"
)

// VIPKey names what a service claims exclusively: protocol, address and
// port, or family and firewall mark. It is part of the VIP index key.
func VIPKey(k *types.VirtualService_Key) string {
	if k.GetFwmark() != 0 {
		return fmt.Sprintf("fwmark/%s/%d", strings.ToLower(k.GetFamily().String()), k.GetFwmark())
	}
	addr, _ := netip.ParseAddr(k.GetIp())
	addr = addr.Unmap() // as ParseAddr: ::ffff:10.0.1.1 is 10.0.1.1 on every call
	return strings.ToLower(k.GetProtocol().String()) + "/" + netip.AddrPortFrom(addr, uint16(k.GetPort())).String()
}

// ServerKeyString is "IP:PORT" ("[IP]:PORT" for IPv6) of a server key;
// an IPv4-mapped address names the IPv4 one, as ParseAddr makes it.
func ServerKeyString(k *types.RealServer_Key) string {
	addr, err := netip.ParseAddr(k.GetIp())
	if err != nil {
		return fmt.Sprintf("%s:%d", k.GetIp(), k.GetPort())
	}
	return netip.AddrPortFrom(addr.Unmap(), uint16(k.GetPort())).String()
}

// ServerName names a server in messages: "SERVICE/IP:PORT".
func ServerName(s *types.RealServer) string {
	return s.GetServiceID() + "/" + ServerKeyString(s.GetKey())
}

// CompareServerKeys orders ServerKeyString values by address, then port.
func CompareServerKeys(a, b string) int {
	pa, errA := netip.ParseAddrPort(a)
	pb, errB := netip.ParseAddrPort(b)
	if errA != nil || errB != nil {
		return strings.Compare(a, b)
	}
	return pa.Compare(pb)
}

// ValidateServerKey checks the key that names a server in an update or
// delete (the port may be 0: firewall-mark services).
func ValidateServerKey(k *types.RealServer_Key) error {
	if k == nil {
		return FieldErrorf("key", "required")
	}
	if _, err := ParseAddr(k.Ip); err != nil {
		return FieldErrorf("key.ip", "%v", err)
	}
	return ValidatePort("key.port", k.Port, true)
}
