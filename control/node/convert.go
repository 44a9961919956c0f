package node

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/merlin-ipvs/merlin/control/store"
	"github.com/merlin-ipvs/merlin/datapath/ipvs"
	"github.com/merlin-ipvs/merlin/model"
	"github.com/merlin-ipvs/merlin/types"
)

// ServiceKeyOf is the kernel key of a validated service.
func ServiceKeyOf(svc *types.VirtualService) ipvs.ServiceKey {
	k := svc.GetKey()
	family := ipvs.IPv4
	if k.GetFamily() == types.AddressFamily_IPV6 {
		family = ipvs.IPv6
	}
	if k.GetFwmark() != 0 {
		return ipvs.ServiceKey{Family: family, FWMark: k.GetFwmark()}
	}
	proto := map[types.Protocol]ipvs.Protocol{types.Protocol_TCP: ipvs.TCP, types.Protocol_UDP: ipvs.UDP, types.Protocol_SCTP: ipvs.SCTP}[k.GetProtocol()]
	addr, _ := netip.ParseAddr(k.GetIp())
	return ipvs.ServiceKey{Family: family, Protocol: proto, Address: addr, Port: uint16(k.GetPort())}.Canonical()
}

// ToIPVS turns a validated service and its servers into the kernel's
// terms. weightOf may override each server's weight (health checks): it is
// given the server's name in ss.Servers and its destination key; nil
// keeps the configured weights.
func ToIPVS(ss *store.ServiceState, weightOf func(key string, dest ipvs.DestinationKey, srv *types.RealServer) uint32) (ipvs.VirtualServer, error) {
	svc := ss.Service
	c := svc.GetConfig()
	cfg := ipvs.ServiceConfig{Scheduler: c.GetScheduler(), Timeout: c.GetPersistenceTimeout().GetValue(), PersistenceEngine: c.GetPersistenceEngine()}
	if m := c.GetPersistenceNetmask(); m != nil {
		cfg.NetmaskBits = uint8(m.Value)
	}
	for _, name := range c.GetFlags() {
		f, err := ipvs.ParseServiceFlag(name)
		if err != nil {
			return ipvs.VirtualServer{}, fmt.Errorf("service %s: %w", svc.Id, err)
		}
		cfg.Flags |= f
	}
	vs := ipvs.VirtualServer{Service: ipvs.Service{Key: ServiceKeyOf(svc), Config: cfg}, Destinations: make([]ipvs.Destination, 0, len(ss.Servers))}
	for key, srv := range ss.Servers {
		d, err := destinationOf(srv, svc)
		if err != nil {
			return ipvs.VirtualServer{}, err
		}
		if weightOf != nil {
			d.Config.Weight = weightOf(key, d.Key, srv)
		}
		vs.Destinations = append(vs.Destinations, d)
	}
	slices.SortFunc(vs.Destinations, func(a, b ipvs.Destination) int {
		return netip.AddrPortFrom(a.Key.Address, a.Key.Port).Compare(netip.AddrPortFrom(b.Key.Address, b.Key.Port))
	})
	return vs, nil
}

// destinationOf is a server as the kernel's destination, at its
// configured weight.
func destinationOf(srv *types.RealServer, svc *types.VirtualService) (ipvs.Destination, error) {
	addr, err := netip.ParseAddr(srv.GetKey().GetIp())
	if err != nil {
		return ipvs.Destination{}, fmt.Errorf("server %s: %w", model.ServerName(srv), err)
	}
	sc := srv.GetConfig()
	d := ipvs.DestinationConfig{
		Weight:         sc.GetWeight().GetValue(),
		UpperThreshold: sc.GetUpperThreshold().GetValue(),
		LowerThreshold: sc.GetLowerThreshold().GetValue(),
	}
	switch model.EffectiveForward(srv, svc) {
	case types.ForwardMethod_ROUTE:
		d.Forward = ipvs.DirectRoute
	case types.ForwardMethod_TUNNEL:
		d.Forward = ipvs.Tunnel
		d.TunnelType = ipvs.TunnelType(sc.GetTunnelType())
		d.TunnelPort = uint16(sc.GetTunnelPort())
		if sc.GetTunnelChecksum() {
			d.TunnelFlags |= ipvs.TunnelChecksum
		}
		if sc.GetTunnelRemoteChecksum() {
			d.TunnelFlags |= ipvs.TunnelRemoteChecksum
		}
	default:
		d.Forward = ipvs.Masquerade
	}
	return ipvs.Destination{Key: ipvs.DestinationKey{Address: addr, Port: uint16(srv.GetKey().GetPort())}, Config: d}, nil
}
