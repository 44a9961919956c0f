package bgp

import (
	"context"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	pkt "github.com/osrg/gobgp/v4/pkg/packet/bgp"

	"github.com/merlin-ipvs/merlin/internal/testenv"
)

func route(addr string, communities ...Community) Route {
	r := HostRoute(netip.MustParseAddr(addr))
	r.Communities = communities
	return r
}

func TestDiffRoutes(t *testing.T) {
	held := map[netip.Prefix]Route{}
	for _, r := range []Route{route("198.18.0.1"), route("198.18.0.2"), route("198.18.0.3", 7), route("2001:db8::1")} {
		held[r.Prefix] = r
	}
	routes := []Route{route("198.18.0.3", 8), route("198.18.0.1"), route("198.18.0.4"), route("2001:db8::1")}
	ch := DiffRoutes(held, routes)
	if got, want := ch.Withdraw, []netip.Prefix{netip.MustParsePrefix("198.18.0.2/32")}; !slices.Equal(got, want) {
		t.Errorf("withdraw %v, want %v", got, want)
	}
	if got, want := sortedByPrefix(ch.Announce), []Route{route("198.18.0.3", 8), route("198.18.0.4")}; !slices.EqualFunc(got, want, Route.Equal) {
		t.Errorf("announce %v, want %v", got, want)
	}
	if ch := DiffRoutes(held, slices.Collect(maps.Values(held))); !ch.Empty() {
		t.Errorf("the same routes differ: %+v", ch)
	}
	if got := applyChanges(slices.Collect(maps.Values(held)), ch); !slices.EqualFunc(got, sortedByPrefix(routes), Route.Equal) {
		t.Errorf("the routes held with the changes are %v, want %v", got, routes)
	}
}

// TestUpdateRefusesWholly: a refused route or prefix changes nothing.
func TestUpdateRefusesWholly(t *testing.T) {
	s, err := New(Config{LocalAS: 65001, RouterID: netip.MustParseAddr("192.0.2.1")}, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := s.Update(ctx, Changes{Announce: []Route{route("198.18.0.1")}}); err == nil {
		t.Error("an update before any set was taken")
	}
	if err := s.Set(ctx, []Route{route("198.18.0.1")}); err != nil {
		t.Fatal(err)
	}
	bad := Changes{Announce: []Route{route("198.18.0.2"), {Prefix: netip.MustParsePrefix("198.18.0.0/24")}},
		Withdraw: []netip.Prefix{netip.MustParsePrefix("198.18.0.1/32")}}
	if err := s.Update(ctx, bad); err == nil || !strings.Contains(err.Error(), "198.18.0.0/24") {
		t.Errorf("a /24 was taken or not named: %v", err)
	}
	if got := s.want; len(got) != 1 || got[0].Prefix != netip.MustParsePrefix("198.18.0.1/32") {
		t.Errorf("routes after a refused update %v, want 198.18.0.1 alone", got)
	}
}

// TestSupervisedUpdate: changes reach a real peer through the speaker's
// process; after the process dies the new one is handed the whole set as
// changed; after a call the speaker refused, the next one hands it the
// whole set again.
func TestSupervisedUpdate(t *testing.T) {
	r := newRouter(t, "127.0.0.1", 65000, neighbor("127.0.0.10", 65001, ""))
	s := startSupervised(t, Config{LocalAS: 65001, RouterID: netip.MustParseAddr("192.0.2.1"),
		Peers: []Peer{{Address: r.addr, Port: r.port, AS: 65000, Local: netip.MustParseAddr("127.0.0.10"), ConnectRetry: time.Second}}},
		testLog(t))
	ctx := context.Background()
	testenv.Eventually(t, "a speaker process", func() bool { return s.PID() != 0 })
	if err := s.Set(ctx, []Route{route("198.18.0.1"), route("198.18.0.2"), route("198.18.0.3")}); err != nil {
		t.Fatal(err)
	}
	atRouter := func(want ...string) func() bool {
		return func() bool {
			got := slices.SortedFunc(maps.Keys(r.learned(pkt.RF_IPv4_UC)), netip.Prefix.Compare)
			return slices.Equal(got, prefixes(want...))
		}
	}
	testenv.Eventually(t, "three routes at the router", atRouter("198.18.0.1/32", "198.18.0.2/32", "198.18.0.3/32"))
	err := s.Update(ctx, Changes{Announce: []Route{route("198.18.0.4"), route("198.18.0.1", 65000<<16|1)},
		Withdraw: []netip.Prefix{netip.MustParsePrefix("198.18.0.2/32")}})
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "198.18.0.2 withdrawn, 198.18.0.4 announced", atRouter("198.18.0.1/32", "198.18.0.3/32", "198.18.0.4/32"))
	testenv.Eventually(t, "198.18.0.1's new community", func() bool {
		p := r.learned(pkt.RF_IPv4_UC)[netip.MustParsePrefix("198.18.0.1/32")]
		return p != nil && slices.Equal(attributes(t, p).communities, []uint32{65000<<16 | 1})
	})

	// Refused by the speaker (no peer carries IPv6): nothing applied there,
	// and the next update hands it the whole set, which it refuses too
	// until the IPv6 route is withdrawn again.
	v6 := Changes{Announce: []Route{route("2001:db8::1"), route("198.18.0.5")}}
	if err := s.Update(ctx, v6); err == nil || !strings.Contains(err.Error(), "no peer carries") {
		t.Fatalf("an IPv6 route without an IPv6 peer: %v", err)
	}
	err = s.Update(ctx, Changes{Withdraw: []netip.Prefix{netip.MustParsePrefix("2001:db8::1/128"), netip.MustParsePrefix("198.18.0.3/32")}})
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "the whole set after a refused update", atRouter("198.18.0.1/32", "198.18.0.4/32", "198.18.0.5/32"))

	first := s.PID()
	if err := syscall.Kill(first, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "a new speaker process", func() bool { return s.PID() != 0 && s.PID() != first })
	if err := s.Update(ctx, Changes{Withdraw: []netip.Prefix{netip.MustParsePrefix("198.18.0.4/32")}}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "the updated set from the new speaker", atRouter("198.18.0.1/32", "198.18.0.5/32"))
	if got := s.Announced(); len(got) != 2 {
		t.Errorf("the new speaker holds %v, want 198.18.0.1 and 198.18.0.5", got)
	}
}

func prefixes(s ...string) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(s))
	for _, p := range s {
		out = append(out, netip.MustParsePrefix(p))
	}
	slices.SortFunc(out, netip.Prefix.Compare)
	return out
}
