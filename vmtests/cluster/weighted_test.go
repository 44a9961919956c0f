package cluster

import (
	"fmt"
	"math"
	"net"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/merlin-ipvs/merlin/vmtests/lab"
)

// weightedConns: how many client connections each share is measured over.
const weightedConns = 10_000

// TestVMWeightedECMP: both nodes announce the DR VIP with the link-bandwidth
// community (the cluster's default), node1 with capacity factor 2. FRR,
// configured as docs/bgp.md says (nothing beyond multipath), weights its
// next hops 2:1, and 10,000 client connections from varied source ports
// split within ±5 % of that. Half of node1's backends fail (as node1 sees
// them): the shares follow to 1:1. Then bird2 as the router: plain ECMP,
// every connection served.
func TestVMWeightedECMP(t *testing.T) {
	c := setUpLab(t, lab.Config{Backends: 4, NodeArg: func(n *lab.Node) []string {
		args := append(lab.BGPArgs(n, ""), "-link-bandwidth-interval", "1s")
		if n.Name == "node1" {
			args = append(args, "-link-bandwidth-capacity", "2")
		}
		return args
	}})
	node1, node2 := c.Nodes[0], c.Nodes[1]
	c.must(exec.Command("ip", "route", "del", lab.DRVIP+"/32").Run())
	r, err := c.StartFRRRouter()
	c.must(err)
	t.Cleanup(r.Stop)
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := r.Vtysh("show bgp ipv4 unicast " + lab.DRVIP)
			t.Logf("FRR:\n%s\nkernel: %s", out, routeShow(lab.DRVIP))
		}
	})
	c.mustMeradm("bgp", "settings", "--link-bandwidth")
	vip := lab.DRVIP + ":80"
	c.mustMeradm("service", "add", "dr", "tcp", vip, "-s", "mh", "-b", "mh-fallback,mh-port", "--forward-method", "route",
		"--health-endpoint", "tcp://:8080", "--health-period", "1s", "--health-timeout", "1s", "--health-up", "1", "--health-down", "1")
	for i := range c.Backends {
		c.mustMeradm("server", "add", "dr", lab.BackendAddr(i)+":80")
	}
	c.waitServersUp(vip, len(c.Backends))

	// 4 servers of weight 1: node1 announces 8 Mbit/s, node2 4 Mbit/s.
	c.waitWeights("2:1", map[string]float64{node1.Addr: 2.0 / 3, node2.Addr: 1.0 / 3})
	c.checkShares(vip, map[*lab.Node]float64{node1: 2.0 / 3, node2: 1.0 / 3})

	// node1 loses its way to two backends: its checks fail, it announces
	// 2 × 2 Mbit/s, as much as node2.
	cut := time.Now()
	for i := range 2 {
		nsRun(t, node1.NS, "ip", "route", "add", "blackhole", lab.BackendAddr(i)+"/32")
	}
	c.waitWeights("1:1", map[string]float64{node1.Addr: 0.5, node2.Addr: 0.5})
	t.Logf("the router's weights followed %s after node1 lost two backends", time.Since(cut).Round(100*time.Millisecond))
	c.checkShares(vip, map[*lab.Node]float64{node1: 0.5, node2: 0.5})

	r.Stop()
	bird, err := c.StartRouter()
	c.must(err)
	t.Cleanup(bird.Stop)
	c.must(bird.WaitNextHops(lab.DRVIP, 90*time.Second, node1.Addr, node2.Addr))
	before := map[*lab.Node]int{node1: c.conns(node1), node2: c.conns(node2)}
	if failed := c.dialMany(vip, 1000); failed > 0 {
		t.Fatalf("bird2: %d of 1,000 connections failed", failed)
	}
	for n, b := range before {
		if c.conns(n) == b {
			t.Errorf("bird2: %s took none of 1,000 connections (plain ECMP expected)", n.Name)
		}
	}
}

var routeWeight = regexp.MustCompile(`nexthop via (\S+) dev \S+ weight (\d+)`)

func routeShow(addr string) string {
	out, _ := exec.Command("ip", "route", "show", addr).CombinedOutput()
	return string(out)
}

// waitWeights waits for the router's kernel route to the DR VIP to weight
// its next hops as shares says (within a percentage point: FRR rounds).
func (c *cluster) waitWeights(what string, shares map[string]float64) {
	c.t.Helper()
	c.eventually("next hops weighted "+what, 90*time.Second, func() error {
		out := routeShow(lab.DRVIP)
		got, total := map[string]float64{}, 0.0
		for _, m := range routeWeight.FindAllStringSubmatch(out, -1) {
			w, _ := strconv.ParseFloat(m[2], 64)
			got[m[1]], total = w, total+w
		}
		for hop, share := range shares {
			if total == 0 || math.Abs(got[hop]/total-share) > 0.01 {
				return fmt.Errorf("route: %s", strings.TrimSpace(out))
			}
		}
		return nil
	})
}

// checkShares makes weightedConns connections and checks each node's
// share of them (its IPVS connection count) is within ±5 % of its target.
func (c *cluster) checkShares(vip string, want map[*lab.Node]float64) {
	c.t.Helper()
	before := map[*lab.Node]int{}
	for n := range want {
		before[n] = c.conns(n)
	}
	if failed := c.dialMany(vip, weightedConns); failed > 0 {
		c.t.Fatalf("%d of %d connections failed", failed, weightedConns)
	}
	// The kernel adds per-CPU counts into the service's every 2 s: wait
	// until every connection is counted, on exactly one node.
	took, total := map[*lab.Node]int{}, 0
	c.eventually("every connection counted", 30*time.Second, func() error {
		total = 0
		for n := range want {
			took[n] = c.conns(n) - before[n]
			total += took[n]
		}
		if total != weightedConns {
			return fmt.Errorf("%d connections counted", total)
		}
		return nil
	})
	for n, target := range want {
		share := float64(took[n]) / float64(total)
		c.t.Logf("%s took %d of %d connections: %.1f %% (target %.1f %%)", n.Name, took[n], total, 100*share, 100*target)
		if math.Abs(share-target) > 0.05*target {
			c.t.Errorf("%s's share %.1f %% is not within ±5 %% of %.1f %%", n.Name, 100*share, 100*target)
		}
	}
}

// dialMany opens k connections to addr from the client, eight at a time,
// each from a new source port, and resets each at once (no TIME_WAIT to
// run out of ports); it returns how many failed.
func (c *cluster) dialMany(addr string, k int) int {
	var next, failed atomic.Int64
	var wg sync.WaitGroup
	deadline := time.Now().Add(5 * time.Minute)
	for range 8 {
		wg.Go(func() {
			_ = c.Client.Do(func() error {
				for next.Add(1) <= int64(k) && time.Now().Before(deadline) {
					conn, err := net.DialTimeout("tcp4", addr, 5*time.Second)
					if err != nil {
						failed.Add(1)
						continue
					}
					_ = conn.(*net.TCPConn).SetLinger(0)
					conn.Close()
				}
				return nil
			})
		})
	}
	wg.Wait()
	if n := next.Load(); n <= int64(k) {
		return k - int(n) + 1 + int(failed.Load()) // the deadline cut it short
	}
	return int(failed.Load())
}
