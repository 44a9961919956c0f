package bgp

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/merlin-ipvs/merlin/internal/testenv"
	"github.com/merlin-ipvs/merlin/internal/testrouter"
)

// TestIPv4OverIPv6NeedsExtendedNextHop: an IPv6 session carrying IPv4 VIPs
// (with IPv6 next hops, RFC 8950) against FRR. A router that does not offer
// the extended next hop capability gets the IPv6 VIP only, and status says
// why; one that offers it gets both.
func TestIPv4OverIPv6NeedsExtendedNextHop(t *testing.T) {
	for _, offer := range []bool{false, true} {
		t.Run(fmt.Sprintf("router offers it: %v", offer), func(t *testing.T) {
			ns := testrouter.Link(t, "mbgp-enh", "198.18.5.21", "198.18.5.22")
			if out, err := exec.Command("ip", "addr", "add", "2001:db8:5::1/64", "dev", "mbgp-enh", "nodad").CombinedOutput(); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			ns.Run(t, "ip", "addr", "add", "2001:db8:5::2/64", "dev", "eth0", "nodad")
			capability := ""
			if offer {
				capability = " neighbor 2001:db8:5::1 capability extended-nexthop\n"
			}
			f := testrouter.StartFRR(t, ns, `frr defaults datacenter
router bgp 65000
 bgp router-id 192.0.2.254
 no bgp ebgp-requires-policy
 neighbor 2001:db8:5::1 remote-as 65001
 neighbor 2001:db8:5::1 passive
`+capability+` address-family ipv4 unicast
  neighbor 2001:db8:5::1 activate
 exit-address-family
 address-family ipv6 unicast
  neighbor 2001:db8:5::1 activate
 exit-address-family
!
`, "bgpd")
			s := startSpeaker(t, Config{LocalAS: 65001, RouterID: netip.MustParseAddr("192.0.2.1"), Peers: []Peer{{
				Address: netip.MustParseAddr("2001:db8:5::2"), AS: 65000, Local: netip.MustParseAddr("2001:db8:5::1"), ConnectRetry: time.Second}}})
			if err := s.Set(context.Background(), []Route{HostRoute(netip.MustParseAddr("198.18.0.1")), HostRoute(netip.MustParseAddr("2001:db8:9::1"))}); err != nil {
				t.Fatal(err)
			}
			v4 := func() string { return f.Vtysh("show bgp ipv4 unicast 198.18.0.1/32") }
			v6 := func() string { return f.Vtysh("show bgp ipv6 unicast 2001:db8:9::1/128") }
			t.Cleanup(func() {
				if t.Failed() {
					ps, _ := s.Peers(context.Background())
					t.Logf("merlin: %+v\nFRR:\n%s\n%s\n%s", ps, v4(), v6(), f.Vtysh("show bgp neighbor 2001:db8:5::1"))
				}
			})
			if offer {
				testenv.Eventually(t, "FRR to hold both VIPs", func() bool {
					return strings.Contains(v4(), "valid, external") && strings.Contains(v6(), "valid, external")
				})
				if ps, _ := s.Peers(context.Background()); ps[0].Warning != "" {
					t.Errorf("warning %q with the capability offered", ps[0].Warning)
				}
				return
			}
			testenv.Eventually(t, "FRR to hold the IPv6 VIP, and status to say why not the IPv4 one", func() bool {
				ps, _ := s.Peers(context.Background())
				return strings.Contains(v6(), "valid, external") && strings.Contains(ps[0].Warning, "extended next hop")
			})
			if out := v4(); !strings.Contains(out, "Network not in table") {
				t.Errorf("FRR holds the IPv4 VIP though it never offered extended next hop:\n%s", out)
			}
		})
	}
}
