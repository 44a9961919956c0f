package bgp

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	pkt "github.com/osrg/gobgp/v4/pkg/packet/bgp"

	"github.com/merlin-ipvs/merlin/internal/testenv"
)

// A hostile router: a configured peer's address (or a peer the speaker
// dials) that sends anything at all, in any state of the session. The
// speaker runs in the test process, so a panic anywhere in GoBGP on what
// the router sent ends the test binary: surviving is the assertion, with
// the speaker's management loop still answering after every input.

const (
	hostileAS      = 65000
	hostileLocalAS = 65001
	// GoBGP holds a peer idle for 5 s after a failed session, so inputs
	// rotate over many peer addresses.
	inboundPeers  = 200 // 127.0.1.1 …: they dial the speaker's listener
	outboundPeers = 40  // 127.0.2.1 …: the speaker dials them
	peerRestUntil = 5500 * time.Millisecond
)

// Session states a hostile input is sent in.
const (
	stateConnected   = iota // right after the TCP connect: no OPEN read or sent
	stateOpenSent           // the speaker's OPEN read, none sent back
	stateOpenConfirm        // OPENs exchanged, no KEEPALIVE yet
	stateEstablished        // OPEN and KEEPALIVE both ways
	numStates
)

// hostileInput is one fuzz input decoded: byte 0 picks the state (bits
// 0-1), the direction (bit 2: the speaker dialed) and the framing (bit 3:
// the rest is raw bytes; otherwise chunks of type, 2-byte body length,
// body, each sent with a valid marker and length so the fuzzer reaches the
// message parsers).
type hostileInput struct {
	state    int
	outbound bool
	wire     []byte
}

func decodeHostile(in []byte) hostileInput {
	if len(in) == 0 {
		return hostileInput{}
	}
	h := hostileInput{state: int(in[0] & 3), outbound: in[0]&4 != 0}
	if in[0]&8 != 0 {
		h.wire = in[1:]
		return h
	}
	rest := in[1:]
	for len(rest) > 0 {
		typ := rest[0]
		n := 0
		if len(rest) >= 3 {
			n = int(binary.BigEndian.Uint16(rest[1:3]))
			rest = rest[3:]
		} else {
			rest = nil
		}
		n = min(n, len(rest))
		h.wire = append(h.wire, frame(typ, rest[:n])...)
		rest = rest[n:]
	}
	return h
}

// frame is a BGP message with a valid marker and length (lengths above the
// protocol's 4096 are sent as they are: the peer must refuse them).
func frame(typ byte, body []byte) []byte {
	out := bytes.Repeat([]byte{0xff}, 16)
	out = binary.BigEndian.AppendUint16(out, uint16(19+len(body)))
	out = append(out, typ)
	return append(out, body...)
}

// encodeHostile is decodeHostile's inverse for framed seeds.
func encodeHostile(state int, outbound bool, msgs ...[]byte) []byte {
	b := byte(state)
	if outbound {
		b |= 4
	}
	out := []byte{b}
	for _, m := range msgs {
		out = append(out, m[0])
		out = binary.BigEndian.AppendUint16(out, uint16(len(m)-1))
		out = append(out, m[1:]...)
	}
	return out
}

func rawHostile(state int, outbound bool, wire []byte) []byte {
	b := byte(state) | 8
	if outbound {
		b |= 4
	}
	return append([]byte{b}, wire...)
}

// hostileHarness is one speaker with many peers, and the addresses that
// play them.
type hostileHarness struct {
	speaker  *Speaker
	listen   netip.AddrPort
	mu       sync.Mutex
	inbound  []peerSlot
	next     int
	dialedIn chan net.Conn // connections the speaker opened to outbound peers
	inputs   int
	reached  [2][numStates]int // inputs sent in each state, by direction
}

type peerSlot struct {
	addr   netip.Addr
	restTo time.Time
}

func newHostileHarness(tb testing.TB) *hostileHarness {
	tb.Helper()
	h := &hostileHarness{dialedIn: make(chan net.Conn, outboundPeers)}
	port := freePort(tb, "127.0.0.1")
	outPort := h.listenOutbound(tb)
	cfg := Config{LocalAS: hostileLocalAS, RouterID: netip.MustParseAddr("192.0.2.1"), ListenPort: port,
		ListenAddresses: []netip.Addr{netip.MustParseAddr("127.0.0.1")}}
	for i := range inboundPeers {
		a := netip.AddrFrom4([4]byte{127, 0, 1, byte(1 + i)})
		h.inbound = append(h.inbound, peerSlot{addr: a})
		cfg.Peers = append(cfg.Peers, Peer{Address: a, AS: hostileAS, Passive: true, HoldTime: 3 * time.Second, ConnectRetry: time.Second})
	}
	for i := range outboundPeers {
		a := netip.AddrFrom4([4]byte{127, 0, 2, byte(1 + i)})
		cfg.Peers = append(cfg.Peers, Peer{Address: a, AS: hostileAS, Port: outPort, HoldTime: 3 * time.Second, ConnectRetry: time.Second})
	}
	h.listen = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port))
	s, err := New(cfg, discardLog())
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	tb.Cleanup(func() {
		cancel()
		<-done
	})
	if err := s.Set(ctx, []Route{HostRoute(netip.MustParseAddr("198.18.0.1"))}); err != nil {
		tb.Fatal(err)
	}
	h.speaker = s
	testenv.Eventually(tb, "the speaker's listener", func() bool {
		c, err := net.Dial("tcp", h.listen.String())
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return h
}

// listenOutbound listens on every outbound peer's address (one port) and
// queues the connections the speaker makes.
func (h *hostileHarness) listenOutbound(tb testing.TB) int {
	port := freePort(tb, "127.0.2.1")
	for i := range outboundPeers {
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.2.%d:%d", 1+i, port))
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { l.Close() })
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				select {
				case h.dialedIn <- c:
				default:
					c.Close()
				}
			}
		}()
	}
	return port
}

// conn is a session with the speaker for one input: a connection from the
// rested inbound peer, or the next one the speaker dialed.
func (h *hostileHarness) conn(outbound bool) (net.Conn, error) {
	if outbound {
		select {
		case c := <-h.dialedIn:
			return c, nil
		case <-time.After(30 * time.Second):
			return nil, errors.New("the speaker dialed no outbound peer for 30s")
		}
	}
	h.mu.Lock()
	slot := &h.inbound[h.next]
	h.next = (h.next + 1) % len(h.inbound)
	wait := time.Until(slot.restTo)
	slot.restTo = time.Now().Add(max(wait, 0) + peerRestUntil)
	addr := slot.addr
	h.mu.Unlock()
	time.Sleep(wait)
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: addr.AsSlice()}, Timeout: 5 * time.Second}
	return d.Dial("tcp", h.listen.String())
}

// run plays one input and checks the speaker still answers.
func (h *hostileHarness) run(t *testing.T, in []byte) {
	start := time.Now()
	hi := decodeHostile(in)
	c, err := h.conn(hi.outbound)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if h.play(c, hi) {
		h.reached[b2i(hi.outbound)][hi.state]++
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := h.speaker.Peers(ctx); err != nil {
		t.Fatalf("the speaker stopped answering after input %x: %v", in, err)
	}
	h.inputs++
	t.Logf("%d inputs, this one in %s", h.inputs, time.Since(start))
}

// play brings the session to the input's state, sends its bytes and reads
// what the speaker answers until it closes or goes quiet. False: the
// speaker ended the session before the state was reached.
func (h *hostileHarness) play(c net.Conn, hi hostileInput) bool {
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if hi.state >= stateOpenSent && readMessage(c) == nil {
		return false
	}
	if hi.state >= stateOpenConfirm {
		c.Write(validOpen())
		if readMessage(c) == nil { // the speaker's KEEPALIVE
			return false
		}
	}
	if hi.state >= stateEstablished {
		c.Write(keepalive())
	}
	c.Write(hi.wire)
	c.SetReadDeadline(time.Now().Add(150 * time.Millisecond))
	io.Copy(io.Discard, c)
	return true
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// readMessage reads one whole message (header and body), nil on failure.
func readMessage(c net.Conn) []byte {
	hdr := make([]byte, 19)
	if _, err := io.ReadFull(c, hdr); err != nil {
		return nil
	}
	n := int(binary.BigEndian.Uint16(hdr[16:18]))
	if n < 19 {
		return nil
	}
	body := make([]byte, n-19)
	if _, err := io.ReadFull(c, body); err != nil {
		return nil
	}
	return append(hdr, body...)
}

func validOpen() []byte {
	caps := []pkt.ParameterCapabilityInterface{pkt.NewCapMultiProtocol(pkt.RF_IPv4_UC), pkt.NewCapFourOctetASNumber(hostileAS)}
	m, _ := pkt.NewBGPOpenMessage(hostileAS, 3, netip.MustParseAddr("192.0.2.200"), []pkt.OptionParameterInterface{pkt.NewOptionParameterCapability(caps)})
	b, _ := m.Serialize()
	return b
}

func keepalive() []byte {
	b, _ := pkt.NewBGPKeepAliveMessage().Serialize()
	return b
}

func discardLog() *slog.Logger { return slog.New(slog.DiscardHandler) }

// updateBody is an UPDATE body: no withdrawals, attrs, one /24.
func updateBody(attrs ...[]byte) []byte {
	all := bytes.Join(attrs, nil)
	b := []byte{0, 0}
	b = binary.BigEndian.AppendUint16(b, uint16(len(all)))
	b = append(b, all...)
	return append(b, 24, 198, 51, 100)
}

func attr(flags, typ byte, v ...byte) []byte { return append([]byte{flags, typ, byte(len(v))}, v...) }

var (
	origin  = attr(0x40, 1, 0)
	asPath  = attr(0x40, 2, 2, 1, 0, 0, 0xfd, 0xe8) // AS_SEQUENCE 65000 (4-octet)
	nextHop = attr(0x40, 3, 127, 0, 1, 1)
)

// hostileSeeds: what broke GoBGP before, and the shapes a fuzzer should
// start from, in every state and both directions.
func hostileSeeds() [][]byte {
	shapes := [][][]byte{
		{{9, 0, 0, 0}},        // unknown message type (osrg/gobgp#3325: v3 panics)
		{{0xff}},              // unknown type, no body
		{{2}, {2, 0}},         // truncated UPDATEs
		{{1, 4, 0xfd, 0xe8}},  // truncated OPEN
		{{4, 1, 2, 3}},        // KEEPALIVE with a body
		{{3, 6, 2, 'x', 'y'}}, // NOTIFICATION with data
		{{5, 0, 99, 0, 1}},    // ROUTE-REFRESH, unknown AFI
		{{5, 0, 1, 1}},        // ROUTE-REFRESH, truncated
		append([][]byte{}, append([]byte{2}, updateBody(origin, asPath, nextHop)...)),                        // valid UPDATE (rejected by policy)
		{append([]byte{2}, updateBody(origin, asPath, nextHop, attr(0x40, 0xf0, 1))...)},                     // unknown well-known attribute (CVE-2026-41642)
		{append([]byte{2}, updateBody(origin, asPath, nextHop, attr(0xc0, 0xf1, 1, 2, 3))...)},               // unknown optional transitive
		{append([]byte{2}, updateBody(origin, asPath, nextHop, attr(0x80, 14, 0, 99, 1, 4, 1, 2, 3, 4))...)}, // MP_REACH, unknown AFI
		{append([]byte{2}, updateBody(origin, asPath, nextHop, attr(0x80, 14, 0, 2, 1, 40))...)},             // MP_REACH, next hop longer than the attribute
		{append([]byte{2}, updateBody(origin, attr(0x40, 2, 2, 200, 0, 0))...)},                              // AS_PATH claiming 200 ASes
		{append([]byte{2}, updateBody(attr(0x40, 1, 7), asPath, nextHop)...)},                                // bad ORIGIN value
		{append([]byte{2}, updateBody(origin, asPath, nextHop, attr(0x40, 8, 1, 2, 3))...)},                  // COMMUNITIES not a multiple of 4
		{append([]byte{2}, updateBody(origin, asPath, nextHop, attr(0xc0, 32, 1, 2, 3, 4))...)},              // LARGE_COMMUNITY truncated
		{append([]byte{2}, updateBody(origin, asPath, nextHop, attr(0x50, 16, 0))...)},                       // extended length flag, short attribute
		{validOpen()[18:]}, // a second OPEN
		{{4}, {4}, {4}, {9, 0}},
	}
	var out [][]byte
	for st := range numStates {
		for _, dir := range []bool{false, true} {
			for _, sh := range shapes {
				out = append(out, encodeHostile(st, dir, sh...))
			}
		}
	}
	marker := bytes.Repeat([]byte{0xff}, 16)
	raws := [][]byte{
		append(append(append([]byte{}, marker...), 0, 22, 9), 0, 0, 0), // the 22-byte crash, raw
		append(append([]byte{}, marker...), 0, 18, 4),                  // length below the header
		append(append([]byte{}, marker...), 0xff, 0xff, 2, 0, 0),       // length above 4096, truncated
		append(append([]byte{}, marker...), 0x10, 0x01, 2),             // 4097 bytes claimed
		append(bytes.Repeat([]byte{0}, 16), 0, 19, 4),                  // bad marker
		marker[:10], // truncated header
	}
	for st := range numStates {
		for _, dir := range []bool{false, true} {
			for _, r := range raws {
				out = append(out, rawHostile(st, dir, r))
			}
		}
	}
	return out
}

// FuzzHostileRouter sends a configured peer's bytes to the speaker in
// every session state, over its listener and over sessions it dials.
// make test runs a bounded number of inputs (FUZZTIME_BGP); plain go test
// runs the seeds.
func FuzzHostileRouter(f *testing.F) {
	for _, s := range hostileSeeds() {
		f.Add(s)
	}
	h := newHostileHarness(f)
	if fl := flag.Lookup("test.fuzz"); fl == nil || fl.Value.String() == "" {
		f.Cleanup(func() { h.checkReached(f) })
	}
	f.Fuzz(h.run)
}

// checkReached: the seeds reached every state in both directions (else
// the harness tests less than it claims).
func (h *hostileHarness) checkReached(tb testing.TB) {
	for dir, states := range h.reached {
		for st, n := range states {
			if n == 0 {
				tb.Errorf("no seed was sent in state %d (outbound %v): %v", st, dir == 1, h.reached)
			}
		}
	}
	tb.Logf("inputs sent per state (inbound, outbound): %v", h.reached)
}

// TestSpeakerSurvivesHostileRouter: the messages that ended merlin with
// GoBGP v3 (an unknown message type right after the TCP connect or in an
// established session; an unknown well-known attribute), sent from a
// configured peer's address, leave the speaker serving its real router.
func TestSpeakerSurvivesHostileRouter(t *testing.T) {
	r := newRouter(t, "127.0.0.1", 65000, neighbor("127.0.0.7", hostileLocalAS, ""))
	hostile := netip.MustParseAddr("127.0.3.1")
	port := freePort(t, "127.0.0.7")
	s := startSpeaker(t, Config{LocalAS: hostileLocalAS, RouterID: netip.MustParseAddr("192.0.2.1"), ListenPort: port,
		ListenAddresses: []netip.Addr{netip.MustParseAddr("127.0.0.7")},
		Peers: []Peer{{Address: r.addr, Port: r.port, AS: 65000, Local: netip.MustParseAddr("127.0.0.7")},
			{Address: hostile, AS: hostileAS, Passive: true, HoldTime: 3 * time.Second}}})
	ctx := context.Background()
	if err := s.Set(ctx, []Route{HostRoute(netip.MustParseAddr("198.18.0.1"))}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "the route at the router", func() bool { return len(r.learned(pkt.RF_IPv4_UC)) == 1 })
	h := &hostileHarness{speaker: s, listen: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.7"), uint16(port)),
		inbound: []peerSlot{{addr: hostile}}}
	unknownType := encodeHostile(stateConnected, false, []byte{9, 0, 0, 0})
	for _, in := range [][]byte{unknownType, rawHostile(stateEstablished, false, frame(9, []byte{0, 0, 0})),
		encodeHostile(stateEstablished, false, append([]byte{2}, updateBody(origin, asPath, nextHop, attr(0x40, 0xf0, 1))...))} {
		h.run(t, in)
	}
	if h.reached[0][stateConnected] != 1 || h.reached[0][stateEstablished] != 2 {
		t.Fatalf("hostile inputs did not reach their states: %v", h.reached)
	}
	if err := s.Set(ctx, []Route{HostRoute(netip.MustParseAddr("198.18.0.2"))}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "the new route at the router", func() bool {
		_, ok := r.learned(pkt.RF_IPv4_UC)[netip.MustParsePrefix("198.18.0.2/32")]
		return ok
	})
	if !peerUp(t, s, 0) {
		t.Error("the real router's session went down")
	}
}

// TestRefusedConnectionsAreCountedNotLogged: connections from addresses
// that are no peer are counted; the log gets one line, not one each.
func TestRefusedConnectionsAreCountedNotLogged(t *testing.T) {
	var logged testenv.Buffer
	port := freePort(t, "127.0.0.8")
	s, err := New(Config{LocalAS: hostileLocalAS, RouterID: netip.MustParseAddr("192.0.2.1"), ListenPort: port,
		ListenAddresses: []netip.Addr{netip.MustParseAddr("127.0.0.8")},
		Peers:           []Peer{{Address: netip.MustParseAddr("127.0.3.2"), AS: hostileAS, Passive: true}}},
		slog.New(slog.NewTextHandler(&logged, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	if err := s.Set(ctx, nil); err != nil {
		t.Fatal(err)
	}
	const conns = 50
	for i := 0; i < conns; {
		if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.8:%d", port)); err == nil {
			c.Close()
			i++
		}
	}
	testenv.Eventually(t, "every refusal counted", func() bool { return s.RefusedConnections() == conns })
	if n := bytes.Count(logged.Bytes(), []byte("no configured peer")); n != 1 {
		t.Errorf("%d log lines for %d refused connections, want 1:\n%s", n, conns, logged.Bytes())
	}
}
