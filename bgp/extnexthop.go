package bgp

import (
	"context"
	"net/netip"
	"time"

	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	"github.com/osrg/gobgp/v4/pkg/server"
)

// IPv4 VIPs over an IPv6 session go out with an IPv6 next hop (RFC 8950),
// which a router may take only if it offered the extended next hop
// capability for IPv4 unicast. GoBGP offers it but never checks the
// router's: merlin withholds IPv4 routes from every such session (an export
// statement on a neighbor set) until the router's OPEN has the capability.

const (
	noExtNextHopSet = "merlin-no-extended-next-hop"
	// neverAPeer keeps the neighbor set from ever being empty.
	neverAPeer = "0.0.0.0/32"
)

// ipv4OverIPv6 lists the IPv6 peers that carry IPv4 unicast.
func (s *Speaker) ipv4OverIPv6(peers []Peer) []netip.Addr {
	var out []netip.Addr
	for _, p := range peers {
		if p.Address.Is4() {
			continue
		}
		for _, f := range s.cfg.families(p) {
			if f == IPv4Unicast {
				out = append(out, p.Address)
			}
		}
	}
	return out
}

// withholdStatement rejects IPv4 routes to the peers in the neighbor set
// (peers added later join it: SetPeers).
func withholdStatement(ctx context.Context, srv interface {
	AddDefinedSet(context.Context, *api.AddDefinedSetRequest) error
}, peers []netip.Addr) (*api.Statement, error) {
	list := []string{neverAPeer}
	for _, a := range peers {
		list = append(list, netip.PrefixFrom(a, 128).String())
	}
	ds := &api.DefinedSet{DefinedType: api.DefinedType_DEFINED_TYPE_NEIGHBOR, Name: noExtNextHopSet, List: list}
	if err := srv.AddDefinedSet(ctx, &api.AddDefinedSetRequest{DefinedSet: ds}); err != nil {
		return nil, err
	}
	return &api.Statement{
		Name: "merlin-ipv4-needs-extended-next-hop",
		Conditions: &api.Conditions{NeighborSet: &api.MatchSet{Type: api.MatchSet_TYPE_ANY, Name: noExtNextHopSet},
			PrefixSet: &api.MatchSet{Type: api.MatchSet_TYPE_ANY, Name: "merlin-host-v4"}},
		Actions: &api.Actions{RouteAction: api.RouteAction_ROUTE_ACTION_REJECT},
	}, nil
}

// checkExtNextHop queues an IPv4-over-IPv6 peer whose session changed
// state for extNextHopLoop (GoBGP's event goroutine must not wait on it).
func (s *Speaker) checkExtNextHop(ev *apiutil.WatchEventMessage_PeerEvent) {
	if ev.Type != apiutil.PEER_EVENT_STATE {
		return
	}
	if p, ok := s.peerByAddress(ev.Peer.State.NeighborAddress.Unmap().String()); !ok || !s.withholdsIPv4(p) {
		return
	}
	select {
	case s.enh <- ev.Peer.State.NeighborAddress.Unmap():
	default: // full: a later event checks again
	}
}

// extNextHopLoop lets IPv4 routes reach a peer whose router offered the
// capability, and withholds them again when its session goes down.
func (s *Speaker) extNextHopLoop(ctx context.Context, srv *server.BgpServer) {
	for {
		select {
		case <-ctx.Done():
			return
		case addr := <-s.enh:
			s.applyExtNextHop(ctx, srv, addr)
		}
	}
}

func (s *Speaker) applyExtNextHop(ctx context.Context, srv *server.BgpServer, addr netip.Addr) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var peer *api.Peer
	if err := srv.ListPeer(ctx, &api.ListPeerRequest{Address: addr.String()}, func(p *api.Peer) { peer = p }); err != nil || peer == nil {
		return // gone, or stopping
	}
	up := peer.GetState().GetSessionState() == api.PeerState_SESSION_STATE_ESTABLISHED
	offered := up && offersExtNextHop(peer.GetState().GetRemoteCap())
	s.enhMu.Lock()
	was := s.enhAllowed[addr]
	s.enhAllowed[addr] = offered
	s.enhWarning[addr] = ""
	if up && !offered {
		s.enhWarning[addr] = "IPv4 VIPs are not sent over this IPv6 session: the router did not offer the extended next hop capability for IPv4 (RFC 8950; FRR: neighbor " +
			addr.String() + " capability extended-nexthop; bird: extended next hop on)"
	}
	s.enhMu.Unlock()
	if offered == was {
		return
	}
	ds := &api.DefinedSet{DefinedType: api.DefinedType_DEFINED_TYPE_NEIGHBOR, Name: noExtNextHopSet, List: []string{netip.PrefixFrom(addr, 128).String()}}
	var err error
	if offered {
		err = srv.DeleteDefinedSet(ctx, &api.DeleteDefinedSetRequest{DefinedSet: ds})
	} else {
		err = srv.AddDefinedSet(ctx, &api.AddDefinedSetRequest{DefinedSet: ds})
	}
	if err == nil && up {
		err = srv.ResetPeer(ctx, &api.ResetPeerRequest{Address: addr.String(), Soft: true, Direction: api.ResetPeerRequest_DIRECTION_OUT})
	}
	if err != nil {
		s.log.Warn("bgp: extended next hop", "peer", addr, "offered", offered, "error", err)
	}
}

// offersExtNextHop: the router's OPEN offers IPv4 unicast with an IPv6
// next hop.
func offersExtNextHop(caps []*api.Capability) bool {
	for _, c := range caps {
		for _, t := range c.GetExtendedNexthop().GetTuples() {
			nlri, nh := t.GetNlriFamily(), t.GetNexthopFamily()
			if nlri.GetAfi() == api.Family_AFI_IP && nlri.GetSafi() == api.Family_SAFI_UNICAST && nh.GetAfi() == api.Family_AFI_IP6 {
				return true
			}
		}
	}
	return false
}

// extNextHopWarning is what status says of a peer's IPv4 routes.
func (s *Speaker) extNextHopWarning(addr netip.Addr) string {
	s.enhMu.Lock()
	defer s.enhMu.Unlock()
	return s.enhWarning[addr]
}

// withholdsIPv4: an IPv6 session that carries IPv4 unicast.
func (s *Speaker) withholdsIPv4(p Peer) bool {
	return len(s.ipv4OverIPv6([]Peer{p})) > 0
}

// setWithheld puts a peer into the neighbor set whose IPv4 routes are
// withheld (a peer added live), or takes it out (removed or changed: a new
// session checks the router's OPEN again).
func (s *Speaker) setWithheld(ctx context.Context, addr netip.Addr, on bool) {
	s.enhMu.Lock()
	delete(s.enhAllowed, addr)
	delete(s.enhWarning, addr)
	s.enhMu.Unlock()
	if !addr.Is6() {
		return
	}
	ds := &api.DefinedSet{DefinedType: api.DefinedType_DEFINED_TYPE_NEIGHBOR, Name: noExtNextHopSet, List: []string{netip.PrefixFrom(addr, 128).String()}}
	var err error
	if on {
		err = s.srv.AddDefinedSet(ctx, &api.AddDefinedSetRequest{DefinedSet: ds})
	} else {
		err = s.srv.DeleteDefinedSet(ctx, &api.DeleteDefinedSetRequest{DefinedSet: ds})
	}
	if err != nil {
		s.log.Debug("bgp: extended next hop neighbor set", "peer", addr, "withheld", on, "error", err)
	}
}
