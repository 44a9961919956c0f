package bfd

import (
	"math/rand/v2"
	"net/netip"
	"time"
)

// session is one peer's state machine (RFC 5880 §6.8). It does no I/O and
// reads no clock: the Manager hands it the time and sends what it returns.
type session struct {
	peer, local netip.Addr
	cfg         Config
	out         sender

	state       State
	diag        Diag // local diagnostic, sent in every packet
	myDisc      uint32
	yourDisc    uint32
	remoteState State
	remoteMinRx time.Duration // the peer's RequiredMinRxInterval
	remoteMinTx time.Duration // the peer's DesiredMinTxInterval
	remoteMult  uint8
	polling     bool // a Poll Sequence is running: every packet has P set

	nextTx   time.Time
	detectAt time.Time // zero while Down: nothing to detect

	since time.Time // in the current state since
	record
	sendErr string // the last send or open error, logged once
}

func newSession(peer, local netip.Addr, cfg Config, disc uint32, now time.Time) *session {
	return &session{peer: peer, local: local, cfg: cfg.WithDefaults(), state: Down, myDisc: disc,
		remoteState: Down, remoteMinRx: time.Microsecond, since: now, nextTx: now}
}

// advertisedTx is the DesiredMinTxInterval this side sends: a second until
// Up (§6.8.3), then the configured one.
func (s *session) advertisedTx() time.Duration {
	if s.state != Up {
		return max(s.cfg.MinTx, slowInterval)
	}
	return s.cfg.MinTx
}

// txInterval is the interval actually used (§6.8.7): never faster than the
// peer can take. Zero: the peer asks for no packets at all.
func (s *session) txInterval() time.Duration {
	if s.remoteMinRx == 0 {
		return 0
	}
	return max(s.advertisedTx(), s.remoteMinRx)
}

// detectTime is the peer's multiplier times the agreed receive interval (§6.8.4).
func (s *session) detectTime() time.Duration {
	return time.Duration(s.remoteMult) * max(s.cfg.MinRx, s.remoteMinTx)
}

// jittered is the next periodic send (§6.8.7: 75–100 % of the interval,
// at most 90 % with a multiplier of 1).
func jittered(d time.Duration, mult uint8) time.Duration {
	top := 26
	if mult == 1 {
		top = 16
	}
	return d * time.Duration(75+rand.IntN(top)) / 100
}

func (s *session) packet() packet {
	p := packet{Diag: s.diag, State: s.state, Poll: s.polling, DetectMult: s.cfg.Multiplier,
		MyDisc: s.myDisc, YourDisc: s.yourDisc, DesiredMinTx: s.advertisedTx(), RequiredMinRx: s.cfg.MinRx}
	if s.state == AdminDown {
		p.Poll = false
	}
	return p
}

// record is what a session has done, kept across its removal.
type record struct {
	flaps      uint64 // times the session left Up
	lastDown   time.Time
	lastDiag   Diag // why it last left Up
	lastChange time.Time
	rx, tx     uint64
}

func (r record) status(peer netip.Addr, st State) Status {
	return Status{Peer: peer, State: st, Since: r.lastChange, RemoteState: Down, Flaps: r.flaps,
		LastDown: r.lastDown, LastDiag: r.lastDiag, Received: r.rx, Sent: r.tx}
}

// change is a state transition for the Manager to report.
type change struct {
	from, to State
	diag     Diag
}

// receive applies a valid packet from the peer (§6.8.6). It returns the
// transition it caused, if any, and whether a Final must be sent now.
func (s *session) receive(p packet, now time.Time) (c *change, final bool) {
	s.rx++
	before := s.txInterval()
	defer func() {
		if iv := s.txInterval(); iv != 0 && (before == 0 || iv < before) {
			s.nextTx = now // faster now (Up, or the peer takes more): no waiting out the slow interval
		}
	}()
	s.yourDisc = p.MyDisc
	s.remoteState = p.State
	s.remoteMult = p.DetectMult
	// A peer lowering its interval announces it in a Poll Sequence and may
	// keep its old pace until the sequence ends (bird does): the detection
	// time shrinks only with the first packet that no longer polls.
	if p.DesiredMinTx >= s.remoteMinTx || !p.Poll {
		s.remoteMinTx = p.DesiredMinTx
	}
	s.remoteMinRx = p.RequiredMinRx
	if p.Final {
		s.polling = false
	}
	if s.state == AdminDown {
		return nil, false
	}
	from := s.state
	switch {
	case p.State == AdminDown:
		if s.state != Down {
			s.down(DiagNeighborDown, now)
		}
	case s.state == Down && p.State == Down:
		s.to(Init, now)
	case s.state == Down && p.State == Init, s.state == Init && p.State != Down:
		s.to(Up, now)
		s.diag = DiagNone
		s.polling = true // our DesiredMinTx drops from 1 s: tell the peer (§6.8.3)
	case s.state == Up && p.State == Down:
		s.down(DiagNeighborDown, now)
	}
	if s.state == Init || s.state == Up {
		s.detectAt = now.Add(s.detectTime())
	}
	if s.state != from {
		c = &change{from: from, to: s.state, diag: s.diag}
	}
	return c, p.Poll
}

func (s *session) to(st State, now time.Time) {
	s.state, s.since = st, now
}

func (s *session) down(d Diag, now time.Time) {
	if s.state == Up {
		s.flaps++
		s.lastDown, s.lastDiag = now, d
	}
	s.to(Down, now)
	s.diag = d
	s.detectAt = time.Time{}
	s.yourDisc = 0 // §6.8.1: bfd.RemoteDiscr is reset when the detect timer expires
	s.polling = false
	s.remoteMult = 0
}

// expire runs at detectAt: the peer has gone silent (§6.8.4).
func (s *session) expire(now time.Time) *change {
	if s.detectAt.IsZero() || now.Before(s.detectAt) || s.state == Down || s.state == AdminDown {
		return nil
	}
	from := s.state
	s.down(DiagDetectExpired, now)
	s.remoteMinRx = time.Microsecond // §6.8.1: back to the initial value
	return &change{from: from, to: Down, diag: DiagDetectExpired}
}

// due reports whether a periodic packet is due, and schedules the next.
func (s *session) due(now time.Time) bool {
	iv := s.txInterval()
	if iv == 0 || now.Before(s.nextTx) {
		return false
	}
	s.nextTx = now.Add(jittered(iv, s.cfg.Multiplier))
	return true
}

// next is the earliest time the session needs attention.
func (s *session) next() time.Time {
	t := s.nextTx
	if s.txInterval() == 0 {
		t = time.Time{}
	}
	if !s.detectAt.IsZero() && (t.IsZero() || s.detectAt.Before(t)) {
		t = s.detectAt
	}
	return t
}

// adminDown stops the session on purpose (§6.8.16): the peer is told, and
// takes it as no failure. Nor is it a flap: merlin's own choice (its BGP
// session went down, the peer was removed, merlin stops) is no failure of
// the path. Counted, it raced: a router's Down, a session up again within
// a millisecond, then the BGP Cease taking it down counted two flaps for
// one failure.
func (s *session) adminDown(now time.Time) *change {
	if s.state == AdminDown {
		return nil
	}
	from := s.state
	s.to(AdminDown, now)
	s.diag = DiagAdminDown
	s.detectAt = time.Time{}
	s.polling = false
	return &change{from: from, to: AdminDown, diag: DiagAdminDown}
}
