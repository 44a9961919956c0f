package bgp

import (
	"bufio"
	"context"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	pkt "github.com/osrg/gobgp/v4/pkg/packet/bgp"
	"github.com/osrg/gobgp/v4/pkg/server"

	"github.com/merlin-ipvs/merlin/internal/testenv"
)

// router is an in-process GoBGP standing in for a router: it accepts
// everything it is sent and can announce routes of its own.
type router struct {
	t    *testing.T
	srv  *server.BgpServer
	addr netip.Addr
	port int
}

func newRouter(t *testing.T, addr string, as uint32, neighbors ...*api.Peer) *router {
	t.Helper()
	r := &router{t: t, srv: server.NewBgpServer(server.LoggerOption(testLog(t), nil)), addr: netip.MustParseAddr(addr), port: freePort(t, addr)}
	served := make(chan struct{})
	go func() {
		defer close(served)
		r.srv.Serve()
	}()
	ctx := context.Background()
	if err := r.srv.StartBgp(ctx, &api.StartBgpRequest{Global: &api.Global{Asn: as, RouterId: "192.0.2.254", ListenPort: int32(r.port), ListenAddresses: []string{addr}}}); err != nil {
		t.Fatal(err)
	}
	for _, n := range neighbors {
		if err := r.srv.AddPeer(ctx, &api.AddPeerRequest{Peer: n}); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		r.srv.Stop()
		<-served
	})
	return r
}

// neighbor is the router's side of a session with merlin: passive, so
// merlin (which does not listen) dials.
func neighbor(addr string, as uint32, password string, families ...*api.Family) *api.Peer {
	p := &api.Peer{Conf: &api.PeerConf{NeighborAddress: addr, PeerAsn: as, AuthPassword: password}, Transport: &api.Transport{PassiveMode: true}}
	for _, f := range families {
		p.AfiSafis = append(p.AfiSafis, &api.AfiSafi{Config: &api.AfiSafiConfig{Family: f, Enabled: true}})
	}
	return p
}

func testLog(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func freePort(t testing.TB, addr string) int {
	l, err := net.Listen("tcp", net.JoinHostPort(addr, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// learned is what the router holds from merlin: prefix → path.
func (r *router) learned(f pkt.Family) map[netip.Prefix]*apiutil.Path {
	out := map[netip.Prefix]*apiutil.Path{}
	err := r.srv.ListPath(apiutil.ListPathRequest{TableType: api.TableType_TABLE_TYPE_GLOBAL, Family: f}, func(n pkt.NLRI, paths []*apiutil.Path) {
		for _, p := range paths {
			if p.PeerAddress.IsValid() {
				out[netip.MustParsePrefix(n.String())] = p
			}
		}
	})
	if err != nil {
		r.t.Fatal(err)
	}
	return out
}

func (r *router) announce(prefixes ...string) {
	for _, p := range prefixes {
		if _, err := r.srv.AddPath(apiutil.AddPathRequest{Paths: []*apiutil.Path{r.path(p)}}); err != nil {
			r.t.Fatal(err)
		}
	}
}

func (r *router) withdraw(prefixes ...string) {
	for _, p := range prefixes {
		if err := r.srv.DeletePath(apiutil.DeletePathRequest{Paths: []*apiutil.Path{r.path(p)}}); err != nil {
			r.t.Fatal(err)
		}
	}
}

// path is the router's own route to prefix.
func (r *router) path(prefix string) *apiutil.Path {
	nlri, err := pkt.NewIPAddrPrefix(netip.MustParsePrefix(prefix))
	if err != nil {
		r.t.Fatal(err)
	}
	nh, _ := pkt.NewPathAttributeNextHop(r.addr)
	return &apiutil.Path{Family: pkt.RF_IPv4_UC, Nlri: nlri, Attrs: []pkt.PathAttributeInterface{pkt.NewPathAttributeOrigin(0), nh}}
}

func startSpeaker(t *testing.T, cfg Config) *Speaker {
	t.Helper()
	s, err := New(cfg, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return s
}

func peerUp(t *testing.T, s *Speaker, i int) bool {
	ps, err := s.Peers(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return ps[i].Up
}

func TestSpeakerAnnouncesAndWithdraws(t *testing.T) {
	r := newRouter(t, "127.0.0.1", 65000, neighbor("127.0.0.2", 65001, ""))
	s := startSpeaker(t, Config{LocalAS: 65001, RouterID: netip.MustParseAddr("192.0.2.1"),
		Peers: []Peer{{Address: r.addr, Port: r.port, AS: 65000, Local: netip.MustParseAddr("127.0.0.2")}}})
	ctx := context.Background()
	gshut := HostRoute(netip.MustParseAddr("198.18.0.2"))
	gshut.Communities = []Community{GracefulShutdown, 64512<<16 | 7}
	gshut.LargeCommunities = []LargeCommunity{{65001, 1, 2}}
	want := []Route{HostRoute(netip.MustParseAddr("198.18.0.1")), gshut}
	if err := s.Set(ctx, want); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "both routes at the router", func() bool { return len(r.learned(pkt.RF_IPv4_UC)) == 2 })
	p := r.learned(pkt.RF_IPv4_UC)[netip.MustParsePrefix("198.18.0.2/32")]
	attrs := attributes(t, p)
	if got := attrs.communities; !slices.Equal(got, []uint32{64512<<16 | 7, 0xFFFF0000}) {
		t.Errorf("communities %x, want 64512:7 and GRACEFUL_SHUTDOWN", got)
	}
	if got := attrs.large; len(got) != 1 || got[0] != (LargeCommunity{65001, 1, 2}) {
		t.Errorf("large communities %v", got)
	}
	if attrs.nextHop != "127.0.0.2" {
		t.Errorf("next hop %q, want the session's local address 127.0.0.2", attrs.nextHop)
	}
	// Same set again: nothing to do; one fewer: withdrawn.
	if err := s.Set(ctx, want); err != nil {
		t.Fatal(err)
	}
	if err := s.Set(ctx, want[:1]); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "198.18.0.2 withdrawn", func() bool { return len(r.learned(pkt.RF_IPv4_UC)) == 1 })
	// Changed attributes replace the route.
	changed := want[0]
	changed.Communities = []Community{65000<<16 | 1}
	if err := s.Set(ctx, []Route{changed}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "new community at the router", func() bool {
		p := r.learned(pkt.RF_IPv4_UC)[changed.Prefix]
		return p != nil && slices.Equal(attributes(t, p).communities, []uint32{65000<<16 | 1})
	})
	ps, err := s.Peers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !ps[0].Up || ps[0].State != "established" || ps[0].PrefixesSent != 1 || ps[0].Since.IsZero() {
		t.Errorf("peer status %+v, want established with 1 prefix sent", ps[0])
	}
}

func TestSpeakerImportsNothing(t *testing.T) {
	r := newRouter(t, "127.0.0.1", 65000, neighbor("127.0.0.3", 65001, ""))
	s := startSpeaker(t, Config{LocalAS: 65001, RouterID: netip.MustParseAddr("192.0.2.1"),
		Peers: []Peer{{Address: r.addr, Port: r.port, AS: 65000, Local: netip.MustParseAddr("127.0.0.3")}}})
	ctx := context.Background()
	if err := s.Set(ctx, []Route{HostRoute(netip.MustParseAddr("198.18.0.1"))}); err != nil {
		t.Fatal(err)
	}
	r.announce("10.0.0.0/8", "198.18.0.9/32")
	testenv.Eventually(t, "the router's 2 routes received", func() bool {
		ps, _ := s.Peers(ctx)
		return ps[0].PrefixesReceived == 2
	})
	table, err := s.Table(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := []netip.Prefix{netip.MustParsePrefix("198.18.0.1/32")}; !slices.Equal(table, want) {
		t.Errorf("speaker's table %v, want only its own %v", table, want)
	}
}

func TestSpeakerMaxPrefixShutsPeerDown(t *testing.T) {
	r := newRouter(t, "127.0.0.1", 65000, neighbor("127.0.0.4", 65001, ""))
	s := startSpeaker(t, Config{LocalAS: 65001, RouterID: netip.MustParseAddr("192.0.2.1"),
		Peers: []Peer{{Address: r.addr, Port: r.port, AS: 65000, Local: netip.MustParseAddr("127.0.0.4"), MaxPrefixes: 3,
			MaxPrefixesRestart: time.Second, ConnectRetry: time.Second}}})
	if err := s.Set(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "session up", func() bool { return peerUp(t, s, 0) })
	r.announce("10.0.0.0/24", "10.0.1.0/24", "10.0.2.0/24", "10.0.3.0/24")
	testenv.Eventually(t, "peer shut down", func() bool {
		ps, _ := s.Peers(context.Background())
		return ps[0].Shut && !ps[0].Up
	})
	ps, _ := s.Peers(context.Background())
	if !strings.Contains(ps[0].LastError, "more than 3 prefixes") || strings.Contains(ps[0].LastError, "shut down") {
		t.Errorf("last error %q, want it to say the limit (and not repeat the shut down Shut says); %+v", ps[0].LastError, ps[0])
	}
	if ps[0].PrefixesSent != 0 || ps[0].PrefixesReceived != 0 {
		t.Errorf("a session that is down counts %d prefixes sent, %d received", ps[0].PrefixesSent, ps[0].PrefixesReceived)
	}
	if ps[0].LastErrorAt.IsZero() {
		t.Error("the last error has no time")
	}
	// After the restart time the peer gets another session: with the flood
	// withdrawn it stays up.
	r.withdraw("10.0.0.0/24", "10.0.1.0/24", "10.0.2.0/24", "10.0.3.0/24")
	testenv.Eventually(t, "the peer tried again after its restart time, and up", func() bool {
		ps, _ := s.Peers(context.Background())
		return ps[0].Up && !ps[0].Shut
	})
}

func TestSpeakerMD5(t *testing.T) {
	r := newRouter(t, "127.0.0.1", 65000, neighbor("127.0.0.5", 65001, "s3cret"), neighbor("127.0.0.6", 65001, "other"))
	good := startSpeaker(t, Config{LocalAS: 65001, RouterID: netip.MustParseAddr("192.0.2.1"),
		Peers: []Peer{{Address: r.addr, Port: r.port, AS: 65000, Local: netip.MustParseAddr("127.0.0.5"), Password: "s3cret"}}})
	before := md5Failures(t)
	bad := startSpeaker(t, Config{LocalAS: 65001, RouterID: netip.MustParseAddr("192.0.2.2"),
		Peers: []Peer{{Address: r.addr, Port: r.port, AS: 65000, Local: netip.MustParseAddr("127.0.0.6"), Password: "wrong", ConnectRetry: time.Second}}})
	for _, s := range []*Speaker{good, bad} {
		if err := s.Set(context.Background(), nil); err != nil {
			t.Fatal(err)
		}
	}
	testenv.Eventually(t, "session with the right password up", func() bool { return peerUp(t, good, 0) })
	// The wrong key: the router's kernel drops the SYNs (counted as MD5
	// failures); the session never comes up.
	testenv.Eventually(t, "the kernel to drop segments with the wrong key", func() bool { return md5Failures(t) > before })
	if peerUp(t, bad, 0) {
		t.Error("session with the wrong password is up")
	}
	// After a few attempts, status says what the node sees and to check
	// the key, with the time.
	testenv.Eventually(t, "status to say the router does not answer, MD5 included", func() bool {
		ps, _ := bad.Peers(context.Background())
		return strings.Contains(ps[0].LastError, "no answer") && strings.Contains(ps[0].LastError, "TCP-MD5") && !ps[0].LastErrorAt.IsZero()
	})
	if ps, _ := good.Peers(context.Background()); ps[0].LastError != "" {
		t.Errorf("the session that came up has a last error %q", ps[0].LastError)
	}
}

// A router that is not listening: after a few attempts status says the
// connection is refused and what to check.
func TestSpeakerSaysWhyItCannotConnect(t *testing.T) {
	port := freePort(t, "127.0.0.1")
	s := startSpeaker(t, Config{LocalAS: 65001, RouterID: netip.MustParseAddr("192.0.2.1"),
		Peers: []Peer{{Address: netip.MustParseAddr("127.0.0.1"), Port: port, AS: 65000, Local: netip.MustParseAddr("127.0.0.7"), ConnectRetry: time.Second}}})
	if err := s.Set(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "status to say the connection is refused", func() bool {
		ps, _ := s.Peers(context.Background())
		return strings.Contains(ps[0].LastError, "connection refused") && strings.Contains(ps[0].LastError, "attempts in a row")
	})
}

// md5Failures is the kernel's count of TCP segments with a wrong MD5
// signature (TcpExt TCPMD5Failure).
func md5Failures(t *testing.T) int {
	f, err := os.Open("/proc/net/netstat")
	if err != nil {
		t.Skip("no /proc/net/netstat:", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	var names []string
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 || fields[0] != "TcpExt:" {
			continue
		}
		if names == nil {
			names = fields
			continue
		}
		for i, n := range names {
			if n == "TCPMD5Failure" && i < len(fields) {
				v, _ := strconv.Atoi(fields[i])
				return v
			}
		}
	}
	t.Skip("kernel does not count TCPMD5Failure")
	return 0
}

func TestSpeakerIPv6(t *testing.T) {
	r := newRouter(t, "::1", 65000, neighbor("::1", 65001, "", ipv6Unicast))
	s := startSpeaker(t, Config{LocalAS: 65001, RouterID: netip.MustParseAddr("192.0.2.1"),
		Peers: []Peer{{Address: r.addr, Port: r.port, AS: 65000, Families: []Family{IPv6Unicast}}}})
	if err := s.Set(context.Background(), []Route{HostRoute(netip.MustParseAddr("2001:db8::1"))}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "the IPv6 route at the router", func() bool { return len(r.learned(pkt.RF_IPv6_UC)) == 1 })
	if err := s.Set(context.Background(), []Route{HostRoute(netip.MustParseAddr("198.18.0.1"))}); err == nil {
		t.Error("an IPv4 route accepted with only an IPv6 family configured")
	}
}

type pathAttrs struct {
	nextHop     string
	communities []uint32
	large       []LargeCommunity
}

func attributes(t *testing.T, p *apiutil.Path) pathAttrs {
	var out pathAttrs
	for _, a := range p.Attrs {
		switch x := a.(type) {
		case *pkt.PathAttributeNextHop:
			out.nextHop = x.Value.String()
		case *pkt.PathAttributeCommunities:
			out.communities = x.Value
		case *pkt.PathAttributeLargeCommunities:
			for _, c := range x.Values {
				out.large = append(out.large, LargeCommunity{c.ASN, c.LocalData1, c.LocalData2})
			}
		}
	}
	return out
}
