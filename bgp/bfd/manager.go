package bfd

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// Peer is one session to configure: a router, the local address packets
// go from (unset: the kernel's choice) and its timers.
type Peer struct {
	Address netip.Addr
	Local   netip.Addr
	Config  Config
}

// Change is a session's state transition, as reported to the Manager's
// owner. Diag says why: DiagDetectExpired is this side's own detection
// (the peer went silent); DiagNeighborDown is the peer's word (it stopped
// hearing this side, or went AdminDown, or replaced its session).
type Change struct {
	Peer     netip.Addr
	From, To State
	Diag     Diag
}

// Status is one session as reported in node status and metrics.
type Status struct {
	Peer        netip.Addr
	State       State
	Since       time.Time
	RemoteState State
	// TxInterval and DetectTime are the negotiated ones while Up.
	TxInterval time.Duration
	DetectTime time.Duration
	Flaps      uint64 // times the session left Up by a failure (not AdminDown)
	LastDown   time.Time
	LastDiag   Diag // why it last left Up
	Received   uint64
	Sent       uint64
}

// Counters are packets dropped before reaching a session.
type Counters struct {
	BadTTL           uint64 // not 255: not from a directly connected peer
	UnknownPeer      uint64 // from an address with no session
	Malformed        uint64 // failed a header check
	BadDiscriminator uint64 // wrong Your Discriminator, or none from a peer not Down
}

// Manager runs the sessions. New starts nothing; Run opens the sockets and
// owns the sessions until its context ends, then signals AdminDown.
type Manager struct {
	log      *slog.Logger
	tr       transport
	onChange func(Change)

	mu       sync.Mutex
	sessions map[netip.Addr]*session
	byDisc   map[uint32]*session
	counters Counters
	// history keeps a removed session's record, so that one that comes
	// back (its BGP session is up again) goes on counting.
	history map[netip.Addr]record
	pending []Change // reported by Run's goroutine, in order
	wake    chan struct{}
	running bool
	// stopListening closes the listener (set by Listen).
	stopListening func()
}

// New makes a manager; onChange is called (from Run's goroutine, never
// with a lock held) for every state transition.
func New(log *slog.Logger, onChange func(Change)) *Manager {
	return newManager(log, defaultTransport(), onChange)
}

func newManager(log *slog.Logger, tr transport, onChange func(Change)) *Manager {
	return &Manager{log: log, tr: tr, onChange: onChange, sessions: map[netip.Addr]*session{},
		byDisc: map[uint32]*session{}, history: map[netip.Addr]record{}, wake: make(chan struct{}, 1)}
}

// Set makes the sessions exactly peers: new ones start Down, removed ones
// signal AdminDown and go, changed ones restart; unchanged ones are left
// alone. Before Run it only records them.
func (m *Manager) Set(peers []Peer) error {
	for _, p := range peers {
		if err := p.Config.Validate("bfd."); err != nil {
			return fmt.Errorf("bfd peer %s: %w", p.Address, err)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	want := map[netip.Addr]Peer{}
	for _, p := range peers {
		want[p.Address] = p
	}
	for addr, s := range m.sessions {
		if p, ok := want[addr]; !ok || p.Local != s.local || p.Config.WithDefaults() != s.cfg {
			m.removeLocked(s, now)
		}
	}
	var errs []error
	for _, p := range peers {
		if m.sessions[p.Address] != nil {
			continue
		}
		s := newSession(p.Address, p.Local, p.Config, m.newDisc(), now)
		s.record = m.history[p.Address]
		m.sessions[p.Address], m.byDisc[s.myDisc] = s, s
		if m.running {
			errs = append(errs, m.openLocked(s))
		}
	}
	m.poke()
	return errors.Join(errs...)
}

func (m *Manager) newDisc() uint32 {
	for {
		d := rand.Uint32()
		if d != 0 && m.byDisc[d] == nil {
			return d
		}
	}
}

func (m *Manager) openLocked(s *session) error {
	out, err := m.tr.open(s.peer, s.local)
	if err != nil {
		return fmt.Errorf("bfd peer %s: %w", s.peer, err)
	}
	s.out = out
	return nil
}

func (m *Manager) removeLocked(s *session, now time.Time) {
	s.adminDown(now)
	m.sendLocked(s)
	s.lastChange = now
	m.history[s.peer] = s.record
	if s.out != nil {
		s.out.close()
	}
	delete(m.sessions, s.peer)
	delete(m.byDisc, s.myDisc)
}

func (m *Manager) poke() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// Status reports every session, sorted by peer; a peer whose session was
// removed is admin-down, with its record.
func (m *Manager) Status() []Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Status, 0, len(m.history)+len(m.sessions))
	for addr, r := range m.history {
		if m.sessions[addr] == nil {
			out = append(out, r.status(addr, AdminDown))
		}
	}
	for _, s := range m.sessions {
		st := s.record.status(s.peer, s.state)
		st.Since, st.RemoteState = s.since, s.remoteState
		if s.state == Up {
			st.TxInterval, st.DetectTime = s.txInterval(), s.detectTime()
		}
		out = append(out, st)
	}
	slices.SortFunc(out, func(a, b Status) int { return a.Peer.Compare(b.Peer) })
	return out
}

// Dropped reports the packets dropped before reaching a session.
func (m *Manager) Dropped() Counters {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.counters
}
