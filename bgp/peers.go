package bgp

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	api "github.com/osrg/gobgp/v4/api"
)

// peers is a snapshot of the configured peers (never modified: SetPeers
// replaces the slice).
func (s *Speaker) peers() []Peer {
	s.peerMu.RLock()
	defer s.peerMu.RUnlock()
	return s.peerList
}

// Equal: the same peer with the same settings (a session to keep).
func (p Peer) Equal(q Peer) bool {
	bfdSame := (p.BFD == nil) == (q.BFD == nil) && (p.BFD == nil || *p.BFD == *q.BFD)
	return bfdSame && p.Address == q.Address && p.AS == q.AS && p.Port == q.Port && p.Local == q.Local &&
		p.Password == q.Password && p.HoldTime == q.HoldTime && p.KeepaliveTime == q.KeepaliveTime &&
		p.ConnectRetry == q.ConnectRetry && p.MultihopTTL == q.MultihopTTL && p.Passive == q.Passive &&
		p.GracefulRestart == q.GracefulRestart && slices.Equal(p.Families, q.Families) &&
		p.MaxPrefixes == q.MaxPrefixes && p.MaxPrefixesRestart == q.MaxPrefixesRestart
}

// PeerChanges is what going from one peer list to another does to
// sessions: peers removed, added, and changed (re-established).
type PeerChanges struct {
	Removed, Added, Changed []Peer // Changed holds the new settings
}

// DiffPeers compares two peer lists by address.
func DiffPeers(old, next []Peer) PeerChanges {
	var c PeerChanges
	was := make(map[netip.Addr]Peer, len(old))
	for _, p := range old {
		was[p.Address] = p
	}
	for _, p := range next {
		o, ok := was[p.Address]
		switch {
		case !ok:
			c.Added = append(c.Added, p)
		case !o.Equal(p):
			c.Changed = append(c.Changed, p)
		}
		delete(was, p.Address)
	}
	for _, p := range old {
		if _, gone := was[p.Address]; gone {
			c.Removed = append(c.Removed, p)
		}
	}
	return c
}

// SetPeers makes the speaker's peers exactly peers, live: a removed peer
// is sent a Cease, a changed one is re-established with its new settings,
// an added one is dialled; the sessions of unchanged peers are untouched.
// The global settings (AS, router id, listener) stay as given to New.
// Nothing is changed when the list does not validate.
func (s *Speaker) SetPeers(ctx context.Context, peers []Peer) error {
	c := s.cfg
	c.Peers = peers
	if err := c.Validate(); err != nil {
		return err
	}
	if err := s.ensureBFD(peers); err != nil {
		return fmt.Errorf("bfd: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	ch := DiffPeers(s.peers(), peers)
	s.peerMu.Lock()
	s.peerList = slices.Clone(peers)
	s.peerMu.Unlock()
	s.carry4, s.carry6, s.gracefulRun = s.carriesOf(peers)
	s.bfdMu.Lock()
	for _, p := range append(ch.Removed, ch.Changed...) {
		delete(s.bfdOn, p.Address)
	}
	s.setBFDSessionsLocked()
	s.bfdMu.Unlock()
	if s.srv == nil || !s.peersAdded {
		return nil // the peers are added with the first routes
	}
	return s.applyPeerChanges(ctx, ch)
}

func (s *Speaker) applyPeerChanges(ctx context.Context, ch PeerChanges) error {
	var errs []error
	for _, p := range append(ch.Removed, ch.Changed...) {
		err := s.srv.DeletePeer(ctx, &api.DeletePeerRequest{Address: p.Address.String()})
		if err != nil {
			errs = append(errs, fmt.Errorf("remove bgp peer %s: %w", p.Address, err))
		}
		s.ev.forget(p.Address.String())
		s.setWithheld(ctx, p.Address, false)
	}
	for _, p := range append(ch.Changed, ch.Added...) {
		if s.withholdsIPv4(p) {
			s.setWithheld(ctx, p.Address, true)
		}
		if err := s.srv.AddPeer(ctx, &api.AddPeerRequest{Peer: s.peerConf(p)}); err != nil && !alreadyPeer(err) {
			errs = append(errs, fmt.Errorf("add bgp peer %s: %w", p.Address, err))
		}
	}
	for _, p := range ch.Removed {
		s.log.Info("bgp: peer removed", "peer", p.Address)
	}
	for _, p := range ch.Changed {
		s.log.Info("bgp: peer changed; its session starts again", "peer", p.Address)
	}
	for _, p := range ch.Added {
		s.log.Info("bgp: peer added", "peer", p.Address)
	}
	return errors.Join(errs...)
}
