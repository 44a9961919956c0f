package bgp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/merlin-ipvs/merlin/bgp/bfd"

	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	"github.com/osrg/gobgp/v4/pkg/server"
)

// Speaker announces a set of host routes to its peers.
type Speaker struct {
	cfg Config
	log *slog.Logger
	ev  *events

	mu          sync.Mutex
	srv         *server.BgpServer // set while Run runs
	want        []Route           // normalized, given before Run started
	carry4      bool              // a peer carries IPv4 unicast (or there is no peer)
	carry6      bool
	sent        map[netip.Prefix]*sentRoute // what GoBGP holds
	gen         uint64                      // of the last sync
	wantSet     bool                        // Set has been called: peers may be added
	peersAdded  bool
	gracefulRun bool // a peer has graceful restart: leave sessions on stop

	// IPv4 over IPv6 sessions (extnexthop.go); enh is nil without any
	enh        chan netip.Addr
	enhMu      sync.Mutex
	enhAllowed map[netip.Addr]bool
	enhWarning map[netip.Addr]string

	bfdMu   sync.Mutex
	bfd     *bfd.Manager        // nil: no peer has had BFD
	bfdStop func()              // set while the BFD manager runs
	bfdOn   map[netip.Addr]bool // peers whose BGP session is established

	// peerMu guards the peers, which SetPeers replaces while Run runs
	// (GoBGP's event callbacks read them: never under mu).
	peerMu   sync.RWMutex
	peerList []Peer
	running  bool // between Run's start and stop: BFD may be started
}

// New checks the configuration; it starts nothing.
func New(cfg Config, log *slog.Logger) (*Speaker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Speaker{cfg: cfg, log: log, ev: newEvents(), sent: map[netip.Prefix]*sentRoute{}, peerList: slices.Clone(cfg.Peers),
		enh: make(chan netip.Addr, 64), enhAllowed: map[netip.Addr]bool{}, enhWarning: map[netip.Addr]string{}, bfdOn: map[netip.Addr]bool{}}
	s.cfg.Peers = nil // peerList is the truth from here on
	s.carry4, s.carry6, s.gracefulRun = s.carriesOf(cfg.Peers)
	return s, nil
}

// carriesOf: which families the peers carry (with no peer, both: the
// routes are kept for peers to come), and whether one has graceful restart.
func (s *Speaker) carriesOf(peers []Peer) (v4, v6, graceful bool) {
	v4, v6 = len(peers) == 0, len(peers) == 0
	for _, p := range peers {
		graceful = graceful || p.GracefulRestart > 0
		for _, f := range s.cfg.families(p) {
			v4 = v4 || f == IPv4Unicast
			v6 = v6 || f == IPv6Unicast
		}
	}
	return v4, v6, graceful
}

// Run runs the speaker until ctx ends. Peers are configured only after
// the first Set, so a starting node opens no session (and, with graceful
// restart, sends no End-of-RIB) before it knows what it serves. On return:
// with graceful restart configured the sessions are left to end with the
// process (the routers keep the routes as stale for the restart time;
// stopping GoBGP would send each a Cease, which ends graceful restart);
// without it every peer is sent a Cease and withdraws the routes at once.
func (s *Speaker) Run(ctx context.Context) error {
	if err := s.startBFD(); err != nil {
		return err
	}
	srv := server.NewBgpServer(server.LoggerOption(slog.New(newLogHandler(s.log.Handler(), s.ev)), nil))
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve()
	}()
	if err := s.start(ctx, srv); err != nil {
		srv.Stop()
		<-served
		s.stopBFD()
		return err
	}
	s.mu.Lock()
	s.srv = srv
	err := s.syncLocked(ctx, s.want)
	s.want = nil
	s.mu.Unlock()
	if err != nil {
		s.log.Warn("bgp: first announcement", "error", err)
	}
	restarted, checked := make(chan struct{}), make(chan struct{})
	go func() { defer close(restarted); s.restartShutPeers(ctx, srv) }()
	go func() {
		defer close(checked)
		s.extNextHopLoop(ctx, srv)
	}()
	<-ctx.Done()
	<-restarted
	<-checked
	s.mu.Lock()
	s.srv = nil
	s.mu.Unlock()
	// BFD says AdminDown (a planned stop, no failure) after the Ceases
	// and before the process ends its graceful-restart sessions.
	if !s.gracefulRun {
		srv.Stop()
		<-served
	}
	s.stopBFD()
	return nil
}

func (s *Speaker) start(ctx context.Context, srv *server.BgpServer) error {
	g := &api.Global{Asn: s.cfg.LocalAS, RouterId: s.cfg.RouterID.String(), ListenPort: int32(s.cfg.ListenPort)}
	if s.cfg.ListenPort == 0 {
		g.ListenPort = -1
	}
	for _, a := range s.cfg.ListenAddresses {
		g.ListenAddresses = append(g.ListenAddresses, a.String())
	}
	if err := srv.StartBgp(ctx, &api.StartBgpRequest{Global: g}); err != nil {
		return fmt.Errorf("start bgp: %w", err)
	}
	if err := setPolicies(ctx, srv, s.ipv4OverIPv6(s.peers())); err != nil {
		return fmt.Errorf("bgp policies: %w", err)
	}
	limit := func(addr string) uint32 {
		p, _ := s.peerByAddress(addr)
		return p.maxPrefixes()
	}
	// The watch ends with ctx (its goroutine is GoBGP's).
	err := srv.WatchEvent(ctx, server.WatchEventMessageCallbacks{
		OnPeerUpdate: func(ev *apiutil.WatchEventMessage_PeerEvent, _ time.Time) {
			s.ev.peerEvent(ev, limit)
			s.followSession(ev)
			s.checkExtNextHop(ev)
		},
	}, server.WatchPeer())
	if err != nil {
		return fmt.Errorf("watch bgp peers: %w", err)
	}
	return nil
}

// Set makes the announced routes exactly routes. Before Run has started
// the speaker only records them. It does not keep routes once it returns;
// an unchanged route costs one map lookup.
func (s *Speaker) Set(ctx context.Context, routes []Route) error {
	want := routes
	for i, r := range routes {
		if err := r.validate(); err != nil {
			return err
		}
		if f := familyOf(r.Prefix); !s.carries(f) {
			return fmt.Errorf("route %s: no peer carries %s", r.Prefix, f)
		}
		if n := r.normalized(); !n.same(r) {
			if &want[0] == &routes[0] {
				want = slices.Clone(routes) // normalize a copy, never the caller's slice
			}
			want[i] = n
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.wantSet = true
	if s.srv == nil {
		s.want = slices.Clone(want) // for Run's first sync
		return nil
	}
	s.want = nil
	return s.syncLocked(ctx, want)
}

func familyOf(p netip.Prefix) Family {
	if p.Addr().Is4() {
		return IPv4Unicast
	}
	return IPv6Unicast
}

func (s *Speaker) carries(f Family) bool {
	if f == IPv4Unicast {
		return s.carry4
	}
	return s.carry6
}

// sentRoute is a route GoBGP holds, with the sync that last wanted it.
type sentRoute struct {
	Route
	gen uint64
}

// syncLocked announces what is new or changed, withdraws what is no longer
// wanted, then (the first time) adds the peers. One unchanged route costs a
// map lookup; the sweep for withdrawals runs only when routes went away.
func (s *Speaker) syncLocked(ctx context.Context, want []Route) error {
	if !s.wantSet {
		return nil
	}
	s.gen++
	var errs []error
	kept := 0
	for _, r := range want {
		old := s.sent[r.Prefix]
		if old != nil && old.gen != s.gen && old.Equal(r) {
			old.gen = s.gen
			kept++
			continue
		}
		if err := s.announce(r); err != nil {
			errs = append(errs, fmt.Errorf("announce %s: %w", r.Prefix, err))
			if old != nil && old.gen != s.gen {
				old.gen = s.gen // still held as it was: withdraw it only when no longer wanted
				kept++
			}
			continue
		}
		if old == nil || old.gen != s.gen {
			kept++
		}
		s.sent[r.Prefix] = &sentRoute{Route: r, gen: s.gen}
	}
	if kept < len(s.sent) {
		for p, old := range s.sent {
			if old.gen == s.gen {
				continue
			}
			if err := s.withdraw(old.Route); err != nil {
				errs = append(errs, fmt.Errorf("withdraw %s: %w", p, err))
				continue
			}
			delete(s.sent, p)
		}
	}
	if !s.peersAdded {
		if err := s.addPeers(ctx); err != nil {
			errs = append(errs, err)
		} else {
			s.peersAdded = true
		}
	}
	return errors.Join(errs...)
}

func (s *Speaker) addPeers(ctx context.Context) error {
	for _, p := range s.peers() {
		if err := s.srv.AddPeer(ctx, &api.AddPeerRequest{Peer: s.peerConf(p)}); err != nil {
			// Already there after an earlier partial attempt is fine.
			if !errors.Is(ctx.Err(), context.Canceled) && !alreadyPeer(err) {
				return fmt.Errorf("add bgp peer %s: %w", p.Address, err)
			}
		}
	}
	return nil
}

// Changes is signalled (coalesced) when a session goes up or down.
func (s *Speaker) Changes() <-chan struct{} { return s.ev.changed }

// Announced is the set of routes handed to GoBGP, sorted.
func (s *Speaker) Announced() []Route {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Route, 0, len(s.sent))
	for _, r := range s.sent {
		out = append(out, r.Route)
	}
	slices.SortFunc(out, func(a, b Route) int { return a.Prefix.Compare(b.Prefix) })
	return out
}

func (s *Speaker) announce(r Route) error {
	p, err := s.path(r)
	if err != nil {
		return err
	}
	_, err = s.srv.AddPath(apiutil.AddPathRequest{Paths: []*apiutil.Path{p}})
	return err
}

func (s *Speaker) withdraw(r Route) error {
	p, err := s.path(r)
	if err != nil {
		return err
	}
	return s.srv.DeletePath(apiutil.DeletePathRequest{Paths: []*apiutil.Path{p}})
}

// RefusedConnections counts connections to the BGP port from addresses
// that are no configured peer (each closed at once).
func (s *Speaker) RefusedConnections() uint64 { return s.ev.refused.Load() }

func (s *Speaker) peerByAddress(addr string) (Peer, bool) {
	s.peerMu.RLock()
	defer s.peerMu.RUnlock()
	for _, p := range s.peerList {
		if p.Address.String() == addr {
			return p, true
		}
	}
	return Peer{}, false
}

func (p Peer) prefixRestart() time.Duration {
	if p.MaxPrefixesRestart == 0 {
		return defaultPrefixRestart
	}
	return p.MaxPrefixesRestart
}

// restartShutPeers gives a peer shut down for its prefix limit another
// session once its restart time has passed, until ctx ends.
func (s *Speaker) restartShutPeers(ctx context.Context, srv *server.BgpServer) {
	after := func(addr string) time.Duration {
		p, _ := s.peerByAddress(addr)
		return p.prefixRestart()
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			for _, addr := range s.ev.restartDue(now, after) {
				s.log.Info("bgp: trying again a peer shut down for its prefix limit", "peer", addr)
				if err := srv.EnablePeer(ctx, &api.EnablePeerRequest{Address: addr}); err != nil {
					s.log.Warn("bgp: enabling the peer again", "peer", addr, "error", err)
				}
			}
		}
	}
}

func (p Peer) maxPrefixes() uint32 {
	if p.MaxPrefixes == 0 {
		return defaultMaxPrefixes
	}
	return p.MaxPrefixes
}
