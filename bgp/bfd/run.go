package bfd

import (
	"context"
	"fmt"
	"net/netip"
	"time"
)

// transport is the network: the Linux sockets, or a test's wire.
type transport interface {
	// listen delivers every datagram to port 3784 with its TTL (hop limit)
	// until stop returns.
	listen(deliver func(src netip.Addr, ttl int, b []byte)) (stop func(), err error)
	// open makes a session's sending socket (a source port of its own).
	open(peer, local netip.Addr) (sender, error)
}

type sender interface {
	send(b []byte) error
	close()
}

// adminDownRepeats: AdminDown goes out this many times on stop (a lost
// datagram would make the peer see a failure instead).
const adminDownRepeats = 3

// Run opens the sockets and runs the sessions until ctx ends; then every
// session signals AdminDown and the sockets close.
func (m *Manager) Run(ctx context.Context) error {
	if err := m.Listen(); err != nil {
		return err
	}
	m.mu.Lock()
	m.running = true
	for _, s := range m.sessions {
		m.openOrLogLocked(s)
	}
	m.mu.Unlock()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		next := m.tick(time.Now())
		if next.IsZero() {
			next = time.Now().Add(time.Hour)
		}
		timer.Reset(time.Until(next))
		select {
		case <-ctx.Done():
			m.shutdown()
			return nil
		case <-timer.C:
		case <-m.wake:
		}
	}
}

// Listen opens port 3784, so that a caller can tell a start-up error
// apart; Run calls it if nobody did.
func (m *Manager) Listen() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopListening != nil {
		return nil
	}
	stop, err := m.tr.listen(m.deliver)
	if err != nil {
		return fmt.Errorf("bfd: %w", err)
	}
	m.stopListening = stop
	return nil
}

// tick expires and sends what is due, reports changes, and returns when
// it must run again.
func (m *Manager) tick(now time.Time) time.Time {
	m.mu.Lock()
	var next time.Time
	for _, s := range m.sessions {
		if c := s.expire(now); c != nil {
			m.queueLocked(s, c)
		}
		if s.due(now) {
			m.sendLocked(s)
		}
		if t := s.next(); !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	changes := m.pending
	m.pending = nil
	m.mu.Unlock()
	for _, c := range changes {
		m.report(c)
	}
	return next
}

func (m *Manager) report(c Change) {
	level := m.log.Info
	if c.From == Up && c.To == Down {
		level = m.log.Warn
	}
	level("bfd: session "+c.To.String(), "peer", c.Peer, "from", c.From.String(), "diag", c.Diag.String())
	if m.onChange != nil {
		m.onChange(c)
	}
}

func (m *Manager) queueLocked(s *session, c *change) {
	m.pending = append(m.pending, Change{Peer: s.peer, From: c.from, To: c.to, Diag: c.diag})
	m.poke()
}

func (m *Manager) sendLocked(s *session) {
	m.sendPacketLocked(s, s.packet())
}

func (m *Manager) sendPacketLocked(s *session, p packet) {
	if s.out == nil && !m.openOrLogLocked(s) {
		return
	}
	if err := s.out.send(p.marshal()); err != nil {
		m.noteSendErrorLocked(s, err)
		return
	}
	s.sendErr = ""
	s.tx++
}

// openOrLogLocked opens a session's socket; a failure is logged once
// until it changes, and retried at the next send.
func (m *Manager) openOrLogLocked(s *session) bool {
	if s.out != nil {
		return true
	}
	if err := m.openLocked(s); err != nil {
		m.noteSendErrorLocked(s, err)
		return false
	}
	return true
}

func (m *Manager) noteSendErrorLocked(s *session, err error) {
	if msg := err.Error(); msg != s.sendErr {
		s.sendErr = msg
		m.log.Warn("bfd: cannot send", "peer", s.peer, "error", err)
	}
}

// deliver takes one datagram from the listener (its goroutine).
func (m *Manager) deliver(src netip.Addr, ttl int, b []byte) {
	src = src.Unmap()
	p, err := parse(b)
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case ttl != 255:
		m.counters.BadTTL++
		return
	case err != nil:
		m.counters.Malformed++
		return
	}
	s := m.sessions[src]
	switch {
	case s == nil:
		m.counters.UnknownPeer++
		return
	case p.YourDisc != 0 && p.YourDisc != s.myDisc,
		p.YourDisc == 0 && p.State != Down && p.State != AdminDown:
		m.counters.BadDiscriminator++
		return
	}
	c, final := s.receive(p, time.Now())
	if c != nil {
		m.queueLocked(s, c)
	}
	if final {
		reply := s.packet()
		reply.Poll, reply.Final = false, true
		m.sendPacketLocked(s, reply)
	}
	m.poke() // the receive interval or detection deadline may have moved
}

// shutdown signals AdminDown on every session and closes their sockets.
func (m *Manager) shutdown() {
	m.mu.Lock()
	now := time.Now()
	for _, s := range m.sessions {
		if c := s.adminDown(now); c != nil {
			m.queueLocked(s, c)
		}
	}
	for i := range adminDownRepeats {
		if i > 0 {
			m.mu.Unlock()
			time.Sleep(10 * time.Millisecond) // spread the repeats over a lossy moment
			m.mu.Lock()
		}
		for _, s := range m.sessions {
			m.sendLocked(s)
		}
	}
	for _, s := range m.sessions {
		if s.out != nil {
			s.out.close()
			s.out = nil
		}
	}
	m.running = false
	stop := m.stopListening
	m.stopListening = func() {}
	changes := m.pending
	m.pending = nil
	m.mu.Unlock()
	stop()
	for _, c := range changes {
		m.report(c)
	}
}
