package bgp

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/merlin-ipvs/merlin/internal/testenv"
	"github.com/merlin-ipvs/merlin/internal/testrouter"
)

// birdPeer is bird2 in a namespace of its own, accepting merlin (AS 65001)
// from host on port 1179.
func birdPeer(t *testing.T, link, host, router string) (*testrouter.Bird, Peer) {
	t.Helper()
	ns := testrouter.Link(t, link, host, router)
	b := testrouter.StartBird(t, ns, fmt.Sprintf(`router id 192.0.2.254;
protocol device {}
protocol bgp merlin {
	local %s port 1179 as 65000;
	neighbor %s as 65001;
	passive on;
	hold time 9;
	error wait time 1, 2;
	ipv4 { import all; export none; };
}
`, router, host))
	return b, Peer{Address: netip.MustParseAddr(router), Port: 1179, AS: 65000, Local: netip.MustParseAddr(host),
		HoldTime: 9 * time.Second, ConnectRetry: time.Second}
}

// TestSupervisedPeersChangeLive: peers added, changed and removed while
// sessions run (as a node applies the cluster's BGP configuration): only
// the session of the peer that changed moves.
func TestSupervisedPeersChangeLive(t *testing.T) {
	birdA, a := birdPeer(t, "mbgp-livea", "198.18.5.21", "198.18.5.22")
	birdB, b := birdPeer(t, "mbgp-liveb", "198.18.5.25", "198.18.5.26")
	cfg := Config{LocalAS: 65001, RouterID: netip.MustParseAddr("192.0.2.1"), Peers: []Peer{a}}
	s := startSupervised(t, cfg, testLog(t))
	if err := s.Set(context.Background(), []Route{HostRoute(netip.MustParseAddr("198.18.0.1"))}); err != nil {
		t.Fatal(err)
	}
	holds := func(r *testrouter.Bird) bool {
		return strings.Contains(r.Cmd("show", "route", "protocol", "merlin"), "198.18.0.1/32")
	}
	peers := func() map[netip.Addr]PeerStatus {
		ps, err := s.Peers(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		out := map[netip.Addr]PeerStatus{}
		for _, p := range ps {
			out[p.Address] = p
		}
		return out
	}
	testenv.Eventually(t, "the session with A up and A holding the route", func() bool { return peers()[a.Address].Up && holds(birdA) })
	upA := peers()[a.Address].Since

	set := func(ps ...Peer) {
		t.Helper()
		c := cfg
		c.Peers = ps
		if err := s.SetConfig(c); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("merlin: %+v\nbird B:\n%s", peers(), birdB.Cmd("show", "protocols", "all", "merlin"))
		}
	})
	unmoved := func(addr netip.Addr, since time.Time) {
		t.Helper()
		if p := peers()[addr]; !p.Up || !p.Since.Equal(since) || p.Transitions != 0 {
			t.Fatalf("the session with %s moved: %+v (up since %v before)", addr, p, since)
		}
	}

	set(a, b) // added
	testenv.Eventually(t, "the session with B up and B holding the route", func() bool { return peers()[b.Address].Up && holds(birdB) })
	unmoved(a.Address, upA)
	upB := peers()[b.Address].Since

	b.HoldTime = 6 * time.Second // changed: re-established with the new hold time (bird's is 9)
	set(a, b)
	testenv.Eventually(t, "the session with B re-established with hold time 6", func() bool {
		p := peers()[b.Address]
		return p.Up && p.Since.After(upB) && strings.Contains(birdB.Cmd("show", "protocols", "all", "merlin"), "Hold timer:") &&
			strings.Contains(birdB.Cmd("show", "protocols", "all", "merlin"), "/6\n")
	})
	unmoved(a.Address, upA)
	upB = peers()[b.Address].Since

	set(b) // A removed: a Cease, and A's route goes
	testenv.Eventually(t, "A to lose the route and its session", func() bool {
		_, listed := peers()[a.Address]
		return !listed && !holds(birdA)
	})
	unmoved(b.Address, upB)
	if !holds(birdB) {
		t.Fatal("B lost the route")
	}

	c := cfg // a new router id: a new speaker, every session again
	c.RouterID, c.Peers = netip.MustParseAddr("192.0.2.2"), []Peer{b}
	if err := s.SetConfig(c); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "B to see the new router id", func() bool {
		return peers()[b.Address].Up && strings.Contains(birdB.Cmd("show", "protocols", "all", "merlin"), "Neighbor ID:      192.0.2.2") && holds(birdB)
	})
	if s.Restarts() != 0 {
		t.Errorf("a new global configuration counted as %d speaker crashes", s.Restarts())
	}

	bad := c // nothing changes on a configuration that does not validate
	bad.Peers = []Peer{b, b}
	if err := s.SetConfig(bad); err == nil || !strings.Contains(err.Error(), "listed twice") {
		t.Fatalf("two peers with one address: %v", err)
	}
}
