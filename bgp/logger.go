package bgp

import (
	"context"
	"fmt"
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
	failures  map[string]int       // failed connection attempts in a row
}

// peerError is why a session last went down, and when.
type peerError struct {
	msg string
	at  time.Time
}

func newEvents() *events {
	return &events{changed: make(chan struct{}, 1), lastError: map[string]peerError{}, shut: map[string]time.Time{},
		failures: map[string]int{}}
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

// forget drops what is known of a peer's sessions (removed or changed).
func (e *events) forget(addr string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.lastError, addr)
	delete(e.shut, addr)
	delete(e.failures, addr)
	e.poke()
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
		e.lastError[addr] = peerError{limitReason(limit(addr)), time.Now()}
	case st.AdminState == api.PeerState_ADMIN_STATE_PFX_CT:
	case st.SessionState == pkt.BGP_FSM_ESTABLISHED:
		delete(e.shut, addr)
		delete(e.failures, addr)
	case st.DisconnectMessage != "" && !shut && !stepUp[st.DisconnectMessage]:
		e.lastError[addr] = peerError{st.DisconnectMessage, time.Now()}
	}
}

// stepUp are GoBGP's reasons for a session moving on towards established:
// no error.
var stepUp = map[string]bool{"idle-hold-timer-expired": true, "new-connection": true,
	"open-msg-received": true, "open-msg-negotiated": true, "restart-timer-expired": true}

// limitReason is the last error of a peer shut down for its prefix limit
// (status says "shut down" by itself).
func limitReason(limit uint32) string {
	return "sent more than " + itoa(limit) + " prefixes (merlin imports none)"
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

// failedConnect is GoBGP's (debug) line for an outgoing connection attempt
// that failed, with the error.
const failedConnect = "failed to connect"

// invalidPeerType is a warning GoBGP writes every few seconds for a peer
// whose session is not up (shut down for its prefix limit, for one).
const invalidPeerType = "invalid peer type"

// connectFailuresShown: after this many failed attempts in a row the
// reason becomes the session's last error.
const connectFailuresShown = 3

// connectFailed counts a failed connection attempt to a peer; from the
// third in a row on, status says what the node sees and what to check.
func (e *events) connectFailed(addr, err string, at time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.failures[addr]++
	if e.failures[addr] >= connectFailuresShown {
		e.lastError[addr] = peerError{fmt.Sprintf("%s (%d attempts in a row)", explainDialError(err), e.failures[addr]), at}
		e.poke()
	}
}

// explainDialError says what a failed connection attempt means.
func explainDialError(err string) string {
	switch {
	case strings.Contains(err, "connection refused"):
		return "connection refused: nothing listens on the router's BGP port for this node (is the neighbour configured there, and the port right?)"
	case strings.Contains(err, "connection reset"):
		return "connection reset by the router: it does not take this node as a neighbour (address, AS, TCP-MD5 key?)"
	case strings.Contains(err, "timeout") || strings.Contains(err, "deadline exceeded"):
		return "no answer: check the address and route, a firewall, and the TCP-MD5 password on both sides (a segment with a missing or wrong key is dropped without a word)"
	case strings.Contains(err, "no route") || strings.Contains(err, "network is unreachable"):
		return "no route to the router: " + err
	}
	return "cannot connect: " + err
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

	peer string // the session's address, in a handler GoBGP derived for one

	// shared by the handlers WithAttrs derives
	mu   *sync.Mutex
	last *time.Time // last refusal logged
}

const refusedLogEvery = time.Minute

func newLogHandler(h slog.Handler, ev *events) *logHandler {
	return &logHandler{Handler: h, ev: ev,
		mu: &sync.Mutex{}, last: &time.Time{}}
}

// Enabled: a session's handler takes its debug lines too, for the one
// that says why a connection attempt failed (see Handle).
func (h *logHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.Handler.Enabled(ctx, l) || h.peer != "" && l >= slog.LevelDebug
}

func (h *logHandler) Handle(ctx context.Context, r slog.Record) error {
	if h.peer != "" && r.Message == failedConnect {
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "Error" {
				h.ev.connectFailed(h.peer, a.Value.String(), r.Time)
			}
			return true
		})
	}
	if r.Message == invalidPeerType && r.Level > slog.LevelDebug {
		r.Level = slog.LevelDebug // GoBGP repeats it while a peer is shut down; nothing to act on
	}
	if !h.Handler.Enabled(ctx, r.Level) {
		return nil
	}
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
	for _, a := range as {
		if a.Key == "Key" { // GoBGP's per-session logger: Topic=Peer, Key=address
			c.peer = a.Value.String()
		}
	}
	return &c
}

func (h *logHandler) WithGroup(name string) slog.Handler {
	c := *h
	c.Handler = h.Handler.WithGroup(name)
	return &c
}
