package node

import (
	"context"
	"iter"
	"net/netip"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/merlin-ipvs/merlin/bgp"
	"github.com/merlin-ipvs/merlin/internal/chunklist"
	"github.com/merlin-ipvs/merlin/model"
	"github.com/merlin-ipvs/merlin/types"
)

// Announcer is what the BGP sink drives: bgp.Speaker or bgp.Supervised.
type Announcer interface {
	Set(ctx context.Context, routes []bgp.Route) error
}

// RouteUpdater is an Announcer that also takes changes alone (bgp.Speaker
// and bgp.Supervised do): after the first set the sink sends only what a
// change made of the routes, so a change costs the speaker (and the pipe
// to its process) the same at 10 VIPs or 10,000.
type RouteUpdater interface {
	Update(ctx context.Context, changes bgp.Changes) error
}

// PeerReporter is an Announcer that reports its sessions (bgp.Speaker and
// bgp.Supervised do): the sink puts them into node status.
type PeerReporter interface {
	Peers(ctx context.Context) ([]bgp.PeerStatus, error)
	Changes() <-chan struct{}
}

// bgpSink gives the speaker the routes of the VIPs the plan announces.
type bgpSink struct {
	a    Announcer
	sent map[netip.Prefix]bgp.Route // what the speaker holds
	set  bool
	bw   *bandwidthLimiter
}

// NewBGPSink is the sink that announces the plan's VIPs by BGP. It gives
// the speaker nothing before the node is first ready, so a starting node
// opens no session (and ends no graceful restart) before it knows what it
// serves; a node that is not ready again later (warming up after its sync
// link was down) withdraws what it announced. A route whose link
// bandwidth alone changed is sent again at most once per interval
// (0: DefaultBandwidthInterval). With a speaker that takes changes
// (RouteUpdater) and a plan that names its changed VIPs, a change costs
// the same at 10 VIPs or 10,000.
func NewBGPSink(a Announcer, interval time.Duration) Sink {
	return &bgpSink{a: a, bw: newBandwidthLimiter(interval, time.Now), sent: map[netip.Prefix]bgp.Route{}}
}

func (s *bgpSink) Name() string { return "bgp" }

func (s *bgpSink) Set(ctx context.Context, p *Plan) error {
	if !p.Node.Ready && !s.set {
		return nil
	}
	u, ok := s.a.(RouteUpdater)
	if !ok || !s.set || p.ChangedVIPs == nil || p.Node.LinkBandwidthPerWeight != s.bw.perWeight {
		return s.setAll(ctx, u, p)
	}
	ch := s.changes(p)
	if ch.Empty() {
		return nil
	}
	if err := u.Update(ctx, ch); err != nil {
		return err // out of step: the runner's next plan has every VIP
	}
	now := s.bw.now()
	for _, pfx := range ch.Withdraw {
		delete(s.sent, pfx)
		s.bw.sentOne(pfx, nil, now)
	}
	for _, r := range ch.Announce {
		s.sent[r.Prefix] = r
		s.bw.sentOne(r.Prefix, &r, now)
	}
	return nil
}

// setAll gives the speaker every route: as a whole set the first time (or
// when it takes no changes), otherwise what differs from what it holds.
func (s *bgpSink) setAll(ctx context.Context, u RouteUpdater, p *Plan) error {
	routes := s.bw.limit(Routes(p.Node.VIPStates.All()), p.Node.LinkBandwidthPerWeight)
	ch := bgp.DiffRoutes(s.sent, routes)
	var err error
	switch {
	case s.set && ch.Empty():
	case s.set && u != nil:
		err = u.Update(ctx, ch)
	default:
		err = s.a.Set(ctx, routes)
	}
	if err != nil {
		return err
	}
	s.sent, s.set = make(map[netip.Prefix]bgp.Route, len(routes)), true
	for _, r := range routes {
		s.sent[r.Prefix] = r
	}
	s.bw.sent(routes, p.Node.LinkBandwidthPerWeight)
	return nil
}

// changes are what the plan's changed VIPs, and the routes whose
// bandwidth was held back, make of the routes the speaker holds.
func (s *bgpSink) changes(p *Plan) bgp.Changes {
	var ch bgp.Changes
	now := s.bw.now()
	look := func(addr netip.Addr) {
		pfx := bgp.HostRoute(addr).Prefix
		v, ok := vipStateOf(p.Node.VIPStates, addr)
		if !ok || !v.Announce {
			delete(s.bw.held, pfx)
			if _, had := s.sent[pfx]; had {
				ch.Withdraw = append(ch.Withdraw, pfx)
			}
			return
		}
		r := s.bw.limitOne(routeOf(v), now)
		if old, had := s.sent[pfx]; !had || !old.Equal(r) {
			ch.Announce = append(ch.Announce, r)
		}
	}
	for addr := range p.ChangedVIPs {
		look(addr)
	}
	held := make([]netip.Prefix, 0, len(s.bw.held)) // look changes held
	for pfx := range s.bw.held {
		if !p.ChangedVIPs[pfx.Addr()] {
			held = append(held, pfx)
		}
	}
	for _, pfx := range held {
		look(pfx.Addr())
	}
	s.bw.setDue()
	return ch
}

// vipStateOf finds addr's state in vips (sorted by address).
func vipStateOf(vips chunklist.List[VIPState], addr netip.Addr) (VIPState, bool) {
	return chunklist.Find(vips, addr, VIPState.address, netip.Addr.Compare)
}

// Due: when a held-back bandwidth change is to be sent.
func (s *bgpSink) Due() time.Time { return s.bw.due }

// Routes are the BGP routes of the announced VIPs.
func Routes(vips iter.Seq[VIPState]) []bgp.Route {
	var out []bgp.Route
	for v := range vips {
		if v.Announce {
			out = append(out, routeOf(v))
		}
	}
	return out
}

// routeOf is the BGP route of an announced VIP.
func routeOf(v VIPState) bgp.Route {
	r := bgp.HostRoute(v.Addr)
	for _, c := range v.Route.Communities {
		r.Communities = append(r.Communities, bgp.Community(c))
	}
	for _, c := range v.Route.LargeCommunities {
		r.LargeCommunities = append(r.LargeCommunities, bgp.LargeCommunity{Global: c[0], Local1: c[1], Local2: c[2]})
	}
	r.LocalPref = v.Route.LocalPref
	r.LinkBandwidth = v.Route.LinkBandwidth
	if v.Route.GracefulShutdown {
		zero := uint32(0)
		r.Communities = append(r.Communities, bgp.GracefulShutdown)
		r.LocalPref = &zero // RFC 8326: lowest preference inside the AS too
	}
	return r
}

// BGPPeers is the speaker's sessions as node status shows them.
func BGPPeers(peers []bgp.PeerStatus) []*types.BGPPeer {
	out := make([]*types.BGPPeer, 0, len(peers))
	for _, p := range peers {
		bp := &types.BGPPeer{Address: p.Address.String(), As: p.AS, State: p.State, PrefixesSent: p.PrefixesSent,
			PrefixesReceived: p.PrefixesReceived, LastError: model.Truncate(p.LastError, 200), Shut: p.Shut}
		if p.Up {
			bp.UpSince = timestamppb.New(p.Since.Truncate(time.Second))
		}
		bp.Bfd = bfdSession(p.BFD)
		bp.Warning = model.Truncate(p.Warning, 300)
		bp.Source = model.Truncate(p.Source, 100)
		if !p.LastErrorAt.IsZero() {
			bp.LastErrorAt = timestamppb.New(p.LastErrorAt.Truncate(time.Second))
		}
		out = append(out, bp)
	}
	return out
}

func bfdSession(b *bgp.BFDStatus) *types.BFDSession {
	if b == nil {
		return nil
	}
	out := &types.BFDSession{State: b.State, RemoteState: b.RemoteState, Flaps: b.Flaps, LastDownReason: b.LastDiag}
	if !b.Since.IsZero() {
		out.Since = timestamppb.New(b.Since)
	}
	if b.DetectTime > 0 {
		out.TxInterval, out.DetectTime = durationpb.New(b.TxInterval), durationpb.New(b.DetectTime)
	}
	if !b.LastDown.IsZero() {
		out.LastDown = timestamppb.New(b.LastDown)
	}
	return out
}

// Report puts the speaker's sessions into node status.
func (s *bgpSink) Report(ctx context.Context) (func(*types.NodeStatus), error) {
	pr, ok := s.a.(PeerReporter)
	if !ok {
		return nil, nil
	}
	peers, err := pr.Peers(ctx)
	if err != nil {
		return nil, err
	}
	out := BGPPeers(peers)
	var configErr string
	if c, ok := s.a.(interface{ ConfigError() string }); ok {
		configErr = model.Truncate(c.ConfigError(), 500)
	}
	return func(st *types.NodeStatus) { st.BgpPeers, st.BgpConfigError = out, configErr }, nil
}

// Changed fires when a session goes up or down.
func (s *bgpSink) Changed() <-chan struct{} {
	if pr, ok := s.a.(PeerReporter); ok {
		return pr.Changes()
	}
	return nil
}
