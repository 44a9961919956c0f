package node

import (
	"context"
	"slices"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/merlin-ipvs/merlin/bgp"
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
	last []bgp.Route
	set  bool
	bw   *bandwidthLimiter
}

// NewBGPSink is the sink that announces the plan's VIPs by BGP. It gives
// the speaker nothing before the node is first ready, so a starting node
// opens no session (and ends no graceful restart) before it knows what it
// serves; a node that is not ready again later (warming up after its sync
// link was down) withdraws what it announced. A route whose link
// bandwidth alone changed is sent again at most once per interval
// (0: DefaultBandwidthInterval).
func NewBGPSink(a Announcer, interval time.Duration) Sink {
	return &bgpSink{a: a, bw: newBandwidthLimiter(interval, time.Now)}
}

func (s *bgpSink) Name() string { return "bgp" }

func (s *bgpSink) Set(ctx context.Context, p *Plan) error {
	if !p.Node.Ready && !s.set {
		return nil
	}
	routes := s.bw.limit(Routes(p.Node.VIPStates), p.Node.LinkBandwidthPerWeight)
	if err := s.send(ctx, routes); err != nil {
		return err
	}
	s.last, s.set = routes, true
	s.bw.sent(routes, p.Node.LinkBandwidthPerWeight)
	return nil
}

// send gives the speaker routes: the whole set the first time (or when it
// takes no changes), then what changed since the last routes it took.
func (s *bgpSink) send(ctx context.Context, routes []bgp.Route) error {
	u, ok := s.a.(RouteUpdater)
	if !s.set || !ok {
		if s.set && slices.EqualFunc(routes, s.last, bgp.Route.Equal) {
			return nil
		}
		return s.a.Set(ctx, routes)
	}
	ch := bgp.DiffRoutes(s.last, routes)
	if ch.Empty() {
		return nil
	}
	return u.Update(ctx, ch)
}

// Due: when a held-back bandwidth change is to be sent.
func (s *bgpSink) Due() time.Time { return s.bw.due }

// Routes are the BGP routes of the announced VIPs.
func Routes(vips []VIPState) []bgp.Route {
	var out []bgp.Route
	for _, v := range vips {
		if !v.Announce {
			continue
		}
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
		out = append(out, r)
	}
	return out
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
