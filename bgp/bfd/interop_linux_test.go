package bfd

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"regexp"
	"testing"

	"github.com/merlin-ipvs/merlin/internal/testenv"
	"github.com/merlin-ipvs/merlin/internal/testrouter"
)

// Real peers: bird2's bfd protocol and FRR's bfdd, each in a namespace of
// its own, and this package's manager in another (its sockets are made
// there), so no test binds port 3784 of the host.

// nsTransport makes the Linux sockets inside a namespace.
type nsTransport struct {
	udpTransport
	ns *testenv.NetNS
}

func (n nsTransport) listen(deliver func(netip.Addr, int, []byte)) (stop func(), err error) {
	err = n.ns.Do(func() error {
		stop, err = n.udpTransport.listen(deliver)
		return err
	})
	return stop, err
}

func (n nsTransport) open(peer, local netip.Addr) (s sender, err error) {
	err = n.ns.Do(func() error {
		s, err = n.udpTransport.open(peer, local)
		return err
	})
	return s, err
}

const (
	merlinAddr = "198.18.7.1"
	routerAddr = "198.18.7.2"
)

type router struct {
	name  string
	start func(t *testing.T, ns *testenv.NetNS) (show func() string)
	up    *regexp.Regexp // in show's output while the session is up
	admin *regexp.Regexp // after merlin's AdminDown (nil: not shown)
}

var routers = []router{
	{
		name: "bird2",
		start: func(t *testing.T, ns *testenv.NetNS) func() string {
			b := testrouter.StartBird(t, ns, fmt.Sprintf(`router id 192.0.2.254;
protocol device {}
protocol bfd {
	interface "*" { min rx interval 300 ms; min tx interval 300 ms; multiplier 3; };
	neighbor %s local %s;
}
`, merlinAddr, routerAddr))
			return func() string { return b.Cmd("show", "bfd", "sessions") }
		},
		up: regexp.MustCompile(merlinAddr + `\s+\S+\s+Up\b`),
	},
	{
		name: "FRR",
		start: func(t *testing.T, ns *testenv.NetNS) func() string {
			f := testrouter.StartFRR(t, ns, fmt.Sprintf(`frr defaults datacenter
bfd
 peer %s local-address %s
  receive-interval 300
  transmit-interval 300
  detect-multiplier 3
 !
!
`, merlinAddr, routerAddr), "bfdd")
			return func() string { return f.Vtysh("show bfd peer " + merlinAddr) }
		},
		up:    regexp.MustCompile(`Status: up`),
		admin: regexp.MustCompile(`Remote diagnostics: administratively down`),
	},
}

func TestInteropWithRouters(t *testing.T) {
	for _, r := range routers {
		t.Run(r.name, func(t *testing.T) {
			local, remote := testrouter.Pair(t, merlinAddr, routerAddr)
			show := r.start(t, remote)
			rec := &recorder{}
			m := newManager(slog.New(slog.NewTextHandler(t.Output(), nil)), nsTransport{ns: local}, rec.add)
			if err := m.Set([]Peer{{Address: netip.MustParseAddr(routerAddr), Local: netip.MustParseAddr(merlinAddr)}}); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(t.Context())
			done := make(chan error, 1)
			go func() { done <- m.Run(ctx) }()
			t.Cleanup(func() { cancel(); <-done })
			state := func() Status { return m.Status()[0] }
			t.Cleanup(func() {
				if t.Failed() {
					t.Logf("merlin: %+v, dropped %+v\n%s:\n%s", m.Status(), m.Dropped(), r.name, show())
				}
			})
			testenv.Eventually(t, "both ends Up", func() bool { return state().State == Up && r.up.MatchString(show()) })
			testenv.Eventually(t, "the fast timers agreed", func() bool { return state().DetectTime == 900_000_000 })

			remote.Run(t, "ip", "link", "set", "eth0", "down") // the router is gone
			testenv.Eventually(t, "merlin to see the router gone", func() bool { return state().State == Down })
			if st := state(); st.LastDiag != DiagDetectExpired || st.Flaps != 1 {
				t.Errorf("after the link went down: %+v, want detection expired and 1 flap", st)
			}
			remote.Run(t, "ip", "link", "set", "eth0", "up")
			testenv.Eventually(t, "both ends Up again", func() bool { return state().State == Up && r.up.MatchString(show()) })

			cancel() // a planned stop
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			done <- nil
			testenv.Eventually(t, "the router to see the session down", func() bool { return !r.up.MatchString(show()) })
			if r.admin != nil && !r.admin.MatchString(show()) {
				t.Errorf("%s does not say merlin went administratively down:\n%s", r.name, show())
			}
		})
	}
}
