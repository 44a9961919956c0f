package bgp

import (
	"context"
	"net/netip"
	"time"

	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	pkt "github.com/osrg/gobgp/v4/pkg/packet/bgp"

	"github.com/merlin-ipvs/merlin/bgp/bfd"
)

// newBFD makes the BFD manager if a peer has BFD (none: no socket). Its
// sessions start as their BGP sessions come up (followSession).
func (s *Speaker) newBFD() error {
	for _, p := range s.cfg.Peers {
		if p.BFD != nil {
			s.bfd = bfd.New(s.log, s.onBFD)
			s.bfdOn = map[netip.Addr]bool{}
			return nil
		}
	}
	return nil
}

// runBFD opens the BFD port (an error is a start-up error) and runs the
// sessions until the returned stop, which signals AdminDown and waits.
func (s *Speaker) runBFD() (stop func(), err error) {
	if s.bfd == nil {
		return func() {}, nil
	}
	if err := s.bfd.Listen(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.bfd.Run(ctx) // listening already: Run fails only there
	}()
	return func() { cancel(); <-done }, nil
}

// onBFD takes a BGP session down the moment this side's BFD stops hearing
// the router. A Down the router signals is its own decision to act on: its
// BGP resets the session if it counts that as a failure (and not, for
// example, on an AdminDown, or while it is a graceful-restart helper with
// `bfd check-control-plane-failure`) — merlin does not second-guess it.
func (s *Speaker) onBFD(c bfd.Change) {
	defer s.ev.poke()
	if c.From != bfd.Up || c.Diag != bfd.DiagDetectExpired {
		return
	}
	s.mu.Lock()
	srv := s.srv
	s.mu.Unlock()
	if srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := srv.ResetPeer(ctx, &api.ResetPeerRequest{Address: c.Peer.String(), Communication: "BFD down: " + c.Diag.String()})
	if err != nil {
		s.log.Warn("bgp: resetting the session after BFD went down", "peer", c.Peer, "error", err)
	}
}

// followSession runs a peer's BFD session only while its BGP session is
// established: BFD guards a session, and FRR replaces its BFD session when
// BGP comes up (it learns its local address), which a session already up
// on both sides would take for a failure and reset BGP.
func (s *Speaker) followSession(ev *apiutil.WatchEventMessage_PeerEvent) {
	if s.bfd == nil || ev.Type != apiutil.PEER_EVENT_STATE {
		return
	}
	addr := ev.Peer.State.NeighborAddress.Unmap()
	up := ev.Peer.State.SessionState == pkt.BGP_FSM_ESTABLISHED
	s.bfdMu.Lock()
	defer s.bfdMu.Unlock()
	if s.bfdOn[addr] == up {
		return
	}
	s.bfdOn[addr] = up
	var peers []bfd.Peer
	for _, p := range s.cfg.Peers {
		if p.BFD != nil && s.bfdOn[p.Address] {
			peers = append(peers, bfd.Peer{Address: p.Address, Local: p.Local, Config: *p.BFD})
		}
	}
	if err := s.bfd.Set(peers); err != nil {
		s.log.Warn("bfd: sessions", "error", err)
	}
}
