package bgp

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/merlin-ipvs/merlin/internal/testenv"
	"github.com/merlin-ipvs/merlin/internal/testrouter"
)

// frrWeightedECMP is the router side of docs/bgp.md's weighted ECMP: two
// merlin nodes (65001) as passive neighbours of FRR (65000) and multipath.
// FRR's default needs no more: next hops are weighted by link bandwidth
// when every path carries it, plain ECMP otherwise.
const frrWeightedECMP = `frr defaults datacenter
hostname r1
router bgp 65000
 bgp router-id 192.0.2.254
 no bgp ebgp-requires-policy
 neighbor MERLIN peer-group
 neighbor MERLIN remote-as 65001
 neighbor MERLIN passive
 neighbor MERLIN timers 10 30
 neighbor 198.18.5.17 peer-group MERLIN
 neighbor 198.18.5.21 peer-group MERLIN
 address-family ipv4 unicast
  maximum-paths 16
  neighbor MERLIN prefix-list MERLIN-VIPS in
  neighbor MERLIN route-map DENY-ALL out
 exit-address-family
!
ip prefix-list MERLIN-VIPS seq 10 permit 198.18.0.0/15 ge 32
route-map DENY-ALL deny 10
!
`

// TestLinkBandwidthWithFRR: two speakers announce one VIP with link
// bandwidths 2:1; FRR installs it in the kernel with next-hop weights in
// that ratio, follows a change of them, and falls back to plain ECMP
// when one node sends no bandwidth (a node not yet upgraded, or a service
// without it on one node).
func TestLinkBandwidthWithFRR(t *testing.T) {
	ns := testrouter.Link(t, "mbgp-lbw", "198.18.5.17", "198.18.5.18")
	if out, err := exec.Command("ip", "addr", "add", "198.18.5.21/30", "dev", "mbgp-lbw").CombinedOutput(); err != nil {
		t.Fatalf("ip addr add: %v: %s", err, out)
	}
	ns.Run(t, "ip", "addr", "add", "198.18.5.22/30", "dev", "eth0")
	f := testrouter.StartFRR(t, ns, frrWeightedECMP, "bgpd")
	speaker := func(local, router, id string) *Speaker {
		return startSpeaker(t, Config{LocalAS: 65001, RouterID: netip.MustParseAddr(id), Peers: []Peer{{
			Address: netip.MustParseAddr(router), AS: 65000, Local: netip.MustParseAddr(local), ConnectRetry: time.Second}}})
	}
	a, b := speaker("198.18.5.17", "198.18.5.18", "192.0.2.1"), speaker("198.18.5.21", "198.18.5.22", "192.0.2.2")
	vip := netip.MustParseAddr("198.18.0.50")
	announce := func(s *Speaker, mbits float32) {
		r := HostRoute(vip)
		r.LinkBandwidth = mbits * 125_000
		if err := s.Set(context.Background(), []Route{r}); err != nil {
			t.Fatal(err)
		}
	}
	kernel := func() string { return ns.Run(t, "ip", "route", "show", vip.String()) }
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("FRR:\n%s\n%s\nkernel:\n%s", f.Vtysh("show bgp ipv4 unicast "+vip.String()), f.Vtysh("show ip route "+vip.String()), kernel())
		}
	})
	weights := func() map[string]int {
		out := map[string]int{}
		for _, m := range nexthopWeight.FindAllStringSubmatch(kernel(), -1) {
			var w int
			fmt.Sscan(m[2], &w)
			out[m[1]] = w
		}
		return out
	}
	ratio := func(want float64) func() bool {
		return func() bool {
			w := weights()
			wa, wb := w["198.18.5.17"], w["198.18.5.21"]
			return wa > 0 && wb > 0 && abs(float64(wa)/float64(wb)-want) < 0.05
		}
	}

	announce(a, 2000)
	announce(b, 1000)
	testenv.Eventually(t, "FRR to install both next hops weighted 2:1", ratio(2))
	if bgp := f.Vtysh("show bgp ipv4 unicast " + vip.String()); !strings.Contains(bgp, "LB:65001:250000000") {
		t.Errorf("FRR does not show node A's link bandwidth as LB:65001:250000000 (2,000 Mbit/s):\n%s", bgp)
	}
	announce(b, 4000)
	testenv.Eventually(t, "the weights to follow a new bandwidth (1:2)", ratio(0.5))
	announce(a, 0) // no community
	testenv.Eventually(t, "FRR to fall back to plain ECMP", ratio(1))
}

var nexthopWeight = regexp.MustCompile(`nexthop via (\S+) dev \S+ weight (\d+)`)

func abs(x float64) float64 {
	if x < 0 {
		return -x
	}
	return x
}
