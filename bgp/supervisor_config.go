package bgp

import (
	"context"
	"net/rpc"
	"slices"
)

// SetConfig gives the speaker a new configuration, live. Peers that
// changed are re-established, added and removed ones come and go, and the
// sessions of the others are untouched. A change of the global settings
// (AS, router id, listener, IPv6 next hop) needs a new speaker: every
// session starts again. A configuration without a local AS turns BGP off
// (the speaker stops). Nothing is changed when cfg does not validate.
func (s *Supervised) SetConfig(cfg Config) error {
	if err := cfg.validateIfOn(); err != nil {
		return err
	}
	cfg.Peers = slices.Clone(cfg.Peers)
	s.mu.Lock()
	s.cfg = cfg
	if s.client == nil && cfg.on() {
		s.downWhy = stateStarting // routes are kept for it, no error
	}
	s.mu.Unlock()
	select {
	case s.reconfigured <- struct{}{}:
	default:
	}
	return nil
}

// NoteConfigError records why the caller could not make a configuration
// (nil: it could), for node status; ConfigError says it.
func (s *Supervised) NoteConfigError(err error) {
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	s.mu.Lock()
	changed := s.configErr != msg
	s.configErr = msg
	s.mu.Unlock()
	if changed {
		s.poke()
	}
}

// ConfigError is the last NoteConfigError's.
func (s *Supervised) ConfigError() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.configErr
}

// waitOn waits until BGP is on (a local AS); false when ctx ended first.
func (s *Supervised) waitOn(ctx context.Context) bool {
	for {
		s.mu.Lock()
		on := s.cfg.on()
		if !on {
			s.downWhy = "BGP is off: no local AS"
		}
		s.mu.Unlock()
		if on {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-s.reconfigured:
		}
	}
}

// globalChanged: the running speaker's global settings are not the
// configuration's (or BGP was turned off).
func (s *Supervised) globalChanged() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.cfg.on() || !s.cfg.sameGlobal(s.childCfg)
}

// updatePeers hands the running speaker the configuration's peers when
// they are not what it has.
func (s *Supervised) updatePeers(ctx context.Context, c *rpc.Client) {
	s.mu.Lock()
	peers, had := s.cfg.Peers, s.childCfg.Peers
	s.mu.Unlock()
	if slices.EqualFunc(peers, had, func(a, b Peer) bool { return a.Equal(b) && a.Source == b.Source }) {
		return
	}
	if err := s.call(ctx, c, "SetPeers", peers, &struct{}{}); err != nil {
		s.log.Error("bgp: changing the peers", "error", err)
		return
	}
	s.mu.Lock()
	s.childCfg.Peers = peers
	s.mu.Unlock()
	s.poke()
}
