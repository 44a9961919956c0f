package bgp

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	pkt "github.com/osrg/gobgp/v4/pkg/packet/bgp"
)

// events keeps what the speaker learns about its sessions from GoBGP's
// peer events: why a session went down, a peer shut down for its prefix
// limit, and connections refused from addresses that are no peer.
type events struct {
	changed chan struct{} // a session changed state (coalesced)

	refused atomic.Uint64 // connections from unconfigured addresses

	mu        sync.Mutex
	lastError map[string]peerError
	shut      map[string]time.Time // shut down for the prefix limit, since
}

// peerError is why a session last went down, and when.
type peerError struct {
	msg string
	at  time.Time
}

func newEvents() *events {
	return &events{changed: make(chan struct{}, 1), lastError: map[string]peerError{}, shut: map[string]time.Time{}}
}

func (e *events) poke() {
	select {
	case e.changed <- struct{}{}:
	default:
	}
}

func (e *events) get(addr string) (lastError peerError, shut bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	_, shut = e.shut[addr]
	return e.lastError[addr], shut
}

// restartDue lists the peers shut down for their prefix limit longer ago
// than their restart time, and forgets that they were shut.
func (e *events) restartDue(now time.Time, after func(addr string) time.Duration) []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var due []string
	for addr, since := range e.shut {
		if now.Sub(since) >= after(addr) {
			due = append(due, addr)
			delete(e.shut, addr)
		}
	}
	return due
}

// peerEvent notes a session's new state. A peer GoBGP shut down for its
// prefix limit stays down (admin state PFX_CT) until merlin restarts.
func (e *events) peerEvent(ev *apiutil.WatchEventMessage_PeerEvent, limit func(addr string) uint32) {
	if ev.Type != apiutil.PEER_EVENT_STATE {
		return
	}
	defer e.poke()
	st := ev.Peer.State
	addr := st.NeighborAddress.String()
	e.mu.Lock()
	defer e.mu.Unlock()
	_, shut := e.shut[addr]
	switch {
	case st.AdminState == api.PeerState_ADMIN_STATE_PFX_CT && !shut:
		e.shut[addr] = time.Now()
		// Status says "shut down" by itself (Shut): the reason only.
		e.lastError[addr] = peerError{"sent more than " + itoa(limit(addr)) + " prefixes (merlin imports none)", time.Now()}
	case st.AdminState == api.PeerState_ADMIN_STATE_PFX_CT:
	case st.SessionState == pkt.BGP_FSM_ESTABLISHED:
		delete(e.shut, addr)
	case st.DisconnectMessage != "" && !shut:
		e.lastError[addr] = peerError{st.DisconnectMessage, time.Now()}
	}
}

func itoa(n uint32) string {
	var b [10]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			return string(b[i:])
		}
	}
}

// refusedConnection is GoBGP's log line for a connection from an address
// that is no configured peer.
const refusedConnection = "Can't find configuration for a new passive connection"

// logHandler passes GoBGP's logs on to merlin's handler, and turns the line GoBGP writes for every connection
// from an unconfigured address into a counter and at most one line per
// refusedLogEvery (anyone who can reach the port could flood the log).
type logHandler struct {
	slog.Handler
	ev *events

	// shared by the handlers WithAttrs derives
	mu   *sync.Mutex
	last *time.Time // last refusal logged
}

const refusedLogEvery = time.Minute

func newLogHandler(h slog.Handler, ev *events) *logHandler {
	return &logHandler{Handler: h, ev: ev,
		mu: &sync.Mutex{}, last: &time.Time{}}
}

func (h *logHandler) Handle(ctx context.Context, r slog.Record) error {
	if strings.HasPrefix(r.Message, refusedConnection) {
		n := h.ev.refused.Add(1)
		if !h.refusedDue(r.Time) {
			return nil
		}
		out := slog.NewRecord(r.Time, slog.LevelWarn, "refused a connection from an address that is no configured peer (logged at most once a minute; merlin_bgp_refused_connections_total counts all)", r.PC)
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "Key" {
				out.AddAttrs(slog.String("from", a.Value.String()))
			}
			return true
		})
		out.AddAttrs(slog.Uint64("total", n))
		r = out
	}
	return h.Handler.Handle(ctx, r)
}

// refusedDue: the first refusal is logged, then at most one a minute.
func (h *logHandler) refusedDue(now time.Time) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.last.IsZero() && now.Sub(*h.last) < refusedLogEvery {
		return false
	}
	*h.last = now
	return true
}

func (h *logHandler) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.Handler = h.Handler.WithAttrs(as)
	return &c
}

func (h *logHandler) WithGroup(name string) slog.Handler {
	c := *h
	c.Handler = h.Handler.WithGroup(name)
	return &c
}
