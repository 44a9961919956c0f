package bgp

import (
	"context"
	"slices"
	"time"

	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	pkt "github.com/osrg/gobgp/v4/pkg/packet/bgp"

	"github.com/merlin-ipvs/merlin/bgp/bfd"
)

// startBFD marks the speaker running and, once a peer has BFD, opens the
// BFD port (an error is the caller's: a start-up or a SetPeers error)
// and runs the manager until stopBFD. No peer with BFD: no socket. Its
// sessions start as their BGP sessions come up (followSession).
func (s *Speaker) startBFD() error {
	s.peerMu.Lock()
	s.running = true
	peers := s.peerList
	s.peerMu.Unlock()
	return s.ensureBFD(peers)
}

// ensureBFD runs the BFD manager if the speaker runs and a peer has BFD.
func (s *Speaker) ensureBFD(peers []Peer) error {
	s.peerMu.RLock()
	running := s.running
	s.peerMu.RUnlock()
	if !running || !slices.ContainsFunc(peers, func(p Peer) bool { return p.BFD != nil }) {
		return nil
	}
	s.bfdMu.Lock()
	defer s.bfdMu.Unlock()
	if s.bfdStop != nil {
		return nil
	}
	m := bfd.New(s.log, s.onBFD)
	if err := m.Listen(); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = m.Run(ctx) // listening already: Run fails only there
	}()
	s.bfd, s.bfdStop = m, func() { cancel(); <-done }
	return nil
}

// stopBFD signals AdminDown on every session and waits for the manager.
func (s *Speaker) stopBFD() {
	s.peerMu.Lock()
	s.running = false
	s.peerMu.Unlock()
	s.bfdMu.Lock()
	stop := s.bfdStop
	s.bfdStop = nil
	s.bfdMu.Unlock()
	if stop != nil {
		stop()
	}
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
	if ev.Type != apiutil.PEER_EVENT_STATE {
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
	s.setBFDSessionsLocked()
}

// setBFDSessionsLocked gives the manager the sessions of the peers with
// BFD whose BGP session is established (bfdMu held).
func (s *Speaker) setBFDSessionsLocked() {
	if s.bfd == nil {
		return
	}
	var peers []bfd.Peer
	for _, p := range s.peers() {
		if p.BFD != nil && s.bfdOn[p.Address] {
			peers = append(peers, bfd.Peer{Address: p.Address, Local: p.Local, Config: *p.BFD})
		}
	}
	if err := s.bfd.Set(peers); err != nil {
		s.log.Warn("bfd: sessions", "error", err)
	}
}
