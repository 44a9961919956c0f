package bgp

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"

	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	pkt "github.com/osrg/gobgp/v4/pkg/packet/bgp"
	"github.com/osrg/gobgp/v4/pkg/server"
)

var (
	ipv4Unicast = &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}
	ipv6Unicast = &api.Family{Afi: api.Family_AFI_IP6, Safi: api.Family_SAFI_UNICAST}
)

func nativeFamily(p netip.Prefix) pkt.Family {
	if p.Addr().Is4() {
		return pkt.RF_IPv4_UC
	}
	return pkt.RF_IPv6_UC
}

func gobgpFamily(f Family) *api.Family {
	if f == IPv6Unicast {
		return ipv6Unicast
	}
	return ipv4Unicast
}

var (
	unspecified4 = netip.IPv4Unspecified()
	unspecified6 = netip.IPv6Unspecified()
)

// path is the GoBGP path of a route. The unspecified next hop becomes
// each session's local address (GoBGP does this for local paths).
func (s *Speaker) path(r Route) (*apiutil.Path, error) {
	nlri, err := pkt.NewIPAddrPrefix(r.Prefix)
	if err != nil {
		return nil, err
	}
	attrs := []pkt.PathAttributeInterface{pkt.NewPathAttributeOrigin(pkt.BGP_ORIGIN_ATTR_TYPE_IGP)}
	if r.Prefix.Addr().Is4() {
		nh, err := pkt.NewPathAttributeNextHop(unspecified4)
		if err != nil {
			return nil, err
		}
		attrs = append(attrs, nh)
	} else {
		nh := unspecified6
		if s.cfg.NextHopIPv6.IsValid() {
			nh = s.cfg.NextHopIPv6
		}
		mp, err := pkt.NewPathAttributeMpReachNLRI(pkt.RF_IPv6_UC, []pkt.PathNLRI{{NLRI: nlri}}, nh)
		if err != nil {
			return nil, err
		}
		attrs = append(attrs, mp)
	}
	if cs := r.Communities; len(cs) > 0 {
		vals := make([]uint32, len(cs))
		for i, x := range cs {
			vals[i] = uint32(x)
		}
		attrs = append(attrs, pkt.NewPathAttributeCommunities(vals))
	}
	if ls := r.LargeCommunities; len(ls) > 0 {
		vals := make([]*pkt.LargeCommunity, len(ls))
		for i, x := range ls {
			vals[i] = pkt.NewLargeCommunity(x.Global, x.Local1, x.Local2)
		}
		attrs = append(attrs, pkt.NewPathAttributeLargeCommunities(vals))
	}
	if r.LocalPref != nil {
		attrs = append(attrs, pkt.NewPathAttributeLocalPref(*r.LocalPref))
	}
	if r.LinkBandwidth > 0 {
		attrs = append(attrs, pkt.NewPathAttributeExtendedCommunities([]pkt.ExtendedCommunityInterface{
			pkt.NewLinkBandwidthExtended(twoOctetAS(s.cfg.LocalAS), r.LinkBandwidth)}))
	}
	return &apiutil.Path{Family: nativeFamily(r.Prefix), Nlri: nlri, Attrs: attrs}, nil
}

// twoOctetAS is the AS a two-octet field carries: AS_TRANS (RFC 6793) for
// a four-octet AS.
func twoOctetAS(as uint32) uint16 {
	if as > 0xFFFF {
		return 23456
	}
	return uint16(as)
}

func secs(d, def time.Duration) uint64 {
	if d == 0 {
		d = def
	}
	return uint64(d / time.Second)
}

func (s *Speaker) peerConf(p Peer) *api.Peer {
	hold := p.hold()
	keep := p.KeepaliveTime
	if keep == 0 {
		keep = hold / 3
	}
	out := &api.Peer{
		Conf: &api.PeerConf{NeighborAddress: p.Address.String(), PeerAsn: p.AS, AuthPassword: p.Password},
		Timers: &api.Timers{Config: &api.TimersConfig{HoldTime: secs(hold, 0), KeepaliveInterval: secs(keep, 0),
			ConnectRetry: secs(p.ConnectRetry, defaultConnectRetry), IdleHoldTimeAfterReset: secs(p.ConnectRetry, defaultConnectRetry)}},
		Transport: &api.Transport{PassiveMode: p.Passive, RemotePort: uint32(p.Port)},
	}
	if p.Local.IsValid() {
		out.Transport.LocalAddress = p.Local.String()
	}
	if p.MultihopTTL > 0 {
		out.EbgpMultihop = &api.EbgpMultihop{Enabled: true, MultihopTtl: uint32(p.MultihopTTL)}
	}
	if p.GracefulRestart > 0 {
		// A new process is a restart: the OPEN says so (restart state and
		// forwarding preserved per family), so the router keeps the stale
		// routes until this speaker's End-of-RIB instead of dropping them
		// at the new OPEN; updates wait for the router's End-of-RIB (or the
		// deferral time).
		out.GracefulRestart = &api.GracefulRestart{Enabled: true, RestartTime: uint32(p.GracefulRestart / time.Second),
			LocalRestarting: true, DeferralTime: 30}
	}
	for _, f := range s.cfg.families(p) {
		af := &api.AfiSafi{
			Config:       &api.AfiSafiConfig{Family: gobgpFamily(f), Enabled: true},
			PrefixLimits: &api.PrefixLimit{Family: gobgpFamily(f), MaxPrefixes: p.maxPrefixes()},
		}
		if p.GracefulRestart > 0 {
			af.MpGracefulRestart = &api.MpGracefulRestart{Config: &api.MpGracefulRestartConfig{Enabled: true}}
		}
		out.AfiSafis = append(out.AfiSafis, af)
	}
	return out
}

// setPolicies: import nothing; export host routes only.
func setPolicies(ctx context.Context, srv *server.BgpServer, ipv4OverIPv6 []netip.Addr) error {
	sets := []*api.DefinedSet{
		{DefinedType: api.DefinedType_DEFINED_TYPE_PREFIX, Name: "merlin-host-v4", Prefixes: []*api.Prefix{{IpPrefix: "0.0.0.0/0", MaskLengthMin: 32, MaskLengthMax: 32}}},
		{DefinedType: api.DefinedType_DEFINED_TYPE_PREFIX, Name: "merlin-host-v6", Prefixes: []*api.Prefix{{IpPrefix: "::/0", MaskLengthMin: 128, MaskLengthMax: 128}}},
	}
	policy := &api.Policy{Name: "merlin-export"}
	for _, ds := range sets {
		if err := srv.AddDefinedSet(ctx, &api.AddDefinedSetRequest{DefinedSet: ds}); err != nil {
			return err
		}
	}
	withhold, err := withholdStatement(ctx, srv, ipv4OverIPv6)
	if err != nil {
		return err
	}
	policy.Statements = append(policy.Statements, withhold) // first: statements are evaluated in order
	for _, ds := range sets {
		policy.Statements = append(policy.Statements, &api.Statement{
			Name:       ds.Name,
			Conditions: &api.Conditions{PrefixSet: &api.MatchSet{Type: api.MatchSet_TYPE_ANY, Name: ds.Name}},
			Actions:    &api.Actions{RouteAction: api.RouteAction_ROUTE_ACTION_ACCEPT},
		})
	}
	// The global import policy sees merlin's own paths too: accept those.
	imports := &api.Policy{Name: "merlin-import", Statements: []*api.Statement{{
		Name:       "merlin-local",
		Conditions: &api.Conditions{RouteType: api.Conditions_ROUTE_TYPE_LOCAL},
		Actions:    &api.Actions{RouteAction: api.RouteAction_ROUTE_ACTION_ACCEPT},
	}}}
	for _, p := range []*api.Policy{policy, imports} {
		if err := srv.AddPolicy(ctx, &api.AddPolicyRequest{Policy: p}); err != nil {
			return err
		}
	}
	for _, pa := range []*api.PolicyAssignment{
		{Name: "global", Direction: api.PolicyDirection_POLICY_DIRECTION_IMPORT, Policies: []*api.Policy{{Name: imports.Name}}, DefaultAction: api.RouteAction_ROUTE_ACTION_REJECT},
		{Name: "global", Direction: api.PolicyDirection_POLICY_DIRECTION_EXPORT, Policies: []*api.Policy{{Name: policy.Name}}, DefaultAction: api.RouteAction_ROUTE_ACTION_REJECT},
	} {
		if err := srv.SetPolicyAssignment(ctx, &api.SetPolicyAssignmentRequest{Assignment: pa}); err != nil {
			return err
		}
	}
	return nil
}

func alreadyPeer(err error) bool {
	return strings.Contains(err.Error(), "can't overwrite the existing peer")
}

var _ = fmt.Sprint
