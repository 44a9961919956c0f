package cluster

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/merlin-ipvs/merlin/vmtests/lab"
)

// countersArgs count on each node's one interface both ways (one-arm
// director), with pins of its own on the lab's bpffs (`ip netns exec`
// mounts a fresh /sys, hiding /sys/fs/bpf).
func countersArgs(n *lab.Node) []string {
	return []string{"-counters-xdp-interfaces", "eth0", "-counters-tc-interfaces", "eth0", "-counters-pin-dir", lab.BPFFS + "/" + n.Name}
}

// allCountersArgs also export every per-backend family, for tests that
// hold the TC counters against the kernel's own.
func allCountersArgs(n *lab.Node) []string {
	return append(countersArgs(n), "-metrics-backend-families", "all")
}

// series reads one metric of a node, failing the test on error.
func (c *cluster) series(n *lab.Node, name string) map[string]float64 {
	c.t.Helper()
	s, err := lab.Series(n, name)
	c.must(err)
	return s
}

// TestVMCounters checks the eBPF counters against the kernel's own IPVS
// counters as the oracle, on real traffic through NAT, direct-routing and
// tunnel services: per real server the packets TC saw forwarded equal
// IPVS's per-destination packets, the NAT replies equal IPVS's outgoing
// packets, and per service XDP's packets equal IPVS's incoming packets.
func TestVMCounters(t *testing.T) {
	c := setUpWith(t, allCountersArgs)
	node1, node2 := c.Nodes[0], c.Nodes[1]
	c.eventually("counters on in status", 30*time.Second, func() error {
		out := c.mustMeradm("status")
		for _, n := range c.Nodes {
			if !strings.Contains(out, n.Name+": traffic counters on (eth0 xdp native, eth0 clsact egress, eth0 clsact ingress)") {
				return fmt.Errorf("status:\n%s", out)
			}
		}
		return nil
	})
	c.mustMeradm("service", "add", "nat", "tcp", lab.NATVIP+":80", "-s", "rr")
	c.mustMeradm("service", "add", "dr", "tcp", lab.DRVIP+":80", "-s", "rr")
	for i := range 3 {
		c.mustMeradm("server", "add", "nat", lab.BackendAddr(i)+":8080", "-f", "masq")
		c.mustMeradm("server", "add", "dr", lab.BackendAddr(i)+":80", "-f", "route")
	}
	// 2 VIPs; 6 servers forwarded to; 3 NAT servers replying. Direct-routing
	// servers are keyed by MAC once the node has resolved them.
	c.waitCounterKeys(11)

	const conns = 30
	c.tally(lab.NATVIP+":80", conns)
	c.tally(lab.DRVIP+":80", conns)
	{ // NAT
		c.compareServers(node1, "nat", "merlin_tc_forwarded_packets_total", "merlin_ipvs_backend_incoming_packets_total")
		c.compareServers(node1, "nat", "merlin_tc_forwarded_bytes_total", "merlin_ipvs_backend_incoming_bytes_total")
		c.compareServers(node1, "nat", "merlin_tc_reply_packets_total", "merlin_ipvs_backend_outgoing_packets_total")
		c.compareServices(node1, "nat", "merlin_xdp_packets_total", "merlin_ipvs_service_incoming_packets_total")
		c.expectSum(node1, "merlin_tc_forwarded_syn_total", "nat", conns)
		c.expectSum(node1, "merlin_tc_reply_synack_total", "nat", conns)
		c.expectSum(node1, "merlin_xdp_syn_total", "nat", conns)
	}
	{ // DirectRouting
		c.compareServers(node2, "dr", "merlin_tc_forwarded_packets_total", "merlin_ipvs_backend_incoming_packets_total")
		c.compareServers(node2, "dr", "merlin_tc_forwarded_bytes_total", "merlin_ipvs_backend_incoming_bytes_total")
		c.compareServices(node2, "dr", "merlin_xdp_packets_total", "merlin_ipvs_service_incoming_packets_total")
		c.expectSum(node2, "merlin_tc_forwarded_syn_total", "dr", conns)
	}
	{ // Unmatched
		// A port no service has: the node's own stack refuses it.
		_, _, _ = c.connect(lab.NATVIP + ":81")
		c.eventually("unmatched counted", 10*time.Second, func() error {
			if v := c.series(node1, "merlin_xdp_unmatched_packets_total")["vip="+lab.NATVIP]; v < 1 {
				return fmt.Errorf("merlin_xdp_unmatched_packets_total{vip=%s} = %v", lab.NATVIP, v)
			}
			return nil
		})
	}
	{ // Tunnel
		for _, b := range c.Backends {
			for _, cmd := range [][]string{{"modprobe", "ipip"}, {"ip", "link", "set", "tunl0", "up"},
				{"sysctl", "-qw", "net.ipv4.conf.tunl0.rp_filter=0", "net.ipv4.conf.all.rp_filter=0"}} {
				_, err := lab.Run(b, cmd[0], cmd[1:]...)
				c.must(err)
			}
		}
		c.mustMeradm("service", "del", "dr")
		c.mustMeradm("service", "add", "tun", "tcp", lab.DRVIP+":80", "-s", "rr")
		for i := range 3 {
			c.mustMeradm("server", "add", "tun", lab.BackendAddr(i)+":80", "-f", "tunnel")
		}
		c.waitCounterKeys(11)
		c.tally(lab.DRVIP+":80", conns)
		c.compareServers(node2, "tun", "merlin_tc_forwarded_packets_total", "merlin_ipvs_backend_incoming_packets_total")
		c.compareServers(node2, "tun", "merlin_tc_forwarded_bytes_total", "merlin_ipvs_backend_incoming_bytes_total")
		c.expectSum(node2, "merlin_tc_forwarded_syn_total", "tun", conns)
	}
	{ // RestartKeepsCounting
		before := sumService(c.series(node1, "merlin_tc_forwarded_packets_total"), "nat")
		c.stopNode(node1, syscall.SIGKILL)
		c.tally(lab.NATVIP+":80", 5) // IPVS forwards on while merlin is down
		c.startNode(node1)
		c.waitReady(node1)
		c.eventually("counters on again", 30*time.Second, func() error {
			if up := c.metric(node1, "merlin_counters_up"); up != 1 {
				return fmt.Errorf("merlin_counters_up %v", up)
			}
			return nil
		})
		c.compareServers(node1, "nat", "merlin_tc_forwarded_packets_total", "merlin_ipvs_backend_incoming_packets_total")
		if after := sumService(c.series(node1, "merlin_tc_forwarded_packets_total"), "nat"); after <= before {
			t.Fatalf("forwarded packets %v after the restart, %v before: counts must go on", after, before)
		}
	}
	testPassive(c, node1)
	testCountersOff(c, node2)
}

// testCountersOff restarts a node with counters it cannot attach: it goes
// on reconciling IPVS and says why the counters are off.
func testCountersOff(c *cluster, n *lab.Node) {
	t := c.t
	c.stopNode(n, syscall.SIGTERM)
	n.Args = append(n.Args, "-counters-xdp-interfaces", "nosuch0")
	c.mustMeradm("service", "add", "later", "tcp", "198.19.0.40:80")
	c.startNode(n)
	c.waitReady(n)
	c.eventually("the node reconciles without counters", 30*time.Second, func() error {
		if table := c.table(n); !strings.Contains(table, "198.19.0.40:80") {
			return fmt.Errorf("table:\n%s", table)
		}
		if up := c.metric(n, "merlin_counters_up"); up != 0 {
			return fmt.Errorf("merlin_counters_up %v", up)
		}
		return nil
	})
	if out := c.mustMeradm("status"); !strings.Contains(out, n.Name+": traffic counters off: xdp on nosuch0: interface") {
		t.Fatalf("status does not say why the counters are off:\n%s", out)
	}
}

// testPassive stops one NAT backend's listener (the kernel refuses its
// connections with RSTs): with passive health on, the node sees the
// refusals and takes it to weight 0 long before its active check (every
// 10 minutes) would probe again.
func testPassive(c *cluster, node *lab.Node) {
	t := c.t
	c.mustMeradm("service", "edit", "nat", "--passive-health", "--passive-window", "5s", "--passive-min-attempts", "3",
		"--health-endpoint", "tcp://:8080", "--health-period", "10m", "--health-timeout", "1s", "--health-up", "1", "--health-down", "2")
	victim := lab.BackendAddr(0) + ":8080"
	weight := func() float64 {
		return c.series(node, "merlin_ipvs_backend_weight")["server="+victim+",service=nat"]
	}
	c.eventually("the victim serves before", 20*time.Second, func() error {
		if w := weight(); w != 1 {
			return fmt.Errorf("weight %v", w)
		}
		return nil
	})
	c.StopBackend(0)
	t.Cleanup(func() { _ = c.StartBackend(0) })
	start := time.Now()
	c.eventually("passive health takes the refusing server down", 30*time.Second, func() error {
		for range 10 { // connections to the refusing server fail: that is the point
			if conn, _, err := c.connect(lab.NATVIP + ":80"); err == nil {
				conn.Close()
			}
		}
		if w := weight(); w != 0 {
			return fmt.Errorf("weight %v", w)
		}
		return nil
	})
	t.Logf("passive health: weight 0 %.1fs after the listener stopped", time.Since(start).Seconds())
	if rst := c.series(node, "merlin_tc_reply_rst_total")["server="+victim+",service=nat"]; rst < 3 {
		t.Errorf("merlin_tc_reply_rst_total of %s = %v, want the refusals counted", victim, rst)
	}
	out := c.mustMeradm("status")
	if !strings.Contains(out, "server nat/"+victim+" down, weight 0") || !strings.Contains(out, "passive: ") {
		t.Fatalf("status does not say passive health took %s down:\n%s", victim, out)
	}
}

// waitCounterKeys waits until every node counts want keys, none unresolved.
func (c *cluster) waitCounterKeys(want float64) {
	c.t.Helper()
	for _, n := range c.Nodes {
		c.eventually("counter keys on "+n.Name, 30*time.Second, func() error {
			keys, unresolved := c.metric(n, "merlin_counters_keys"), c.metric(n, "merlin_counters_unresolved_servers")
			if keys != want || unresolved != 0 {
				return fmt.Errorf("merlin_counters_keys %v, merlin_counters_unresolved_servers %v; want %v and 0", keys, unresolved, want)
			}
			return nil
		})
	}
}

// compareServers waits until, for every server of the service, the eBPF
// metric equals the kernel's (they are read in one scrape; packets of
// closing connections may still be on their way).
func (c *cluster) compareServers(n *lab.Node, service, ebpf, kernel string) {
	c.t.Helper()
	c.eventually(fmt.Sprintf("%s = %s for %s on %s", ebpf, kernel, service, n.Name), 20*time.Second, func() error {
		got, want := c.series(n, ebpf), c.series(n, kernel)
		servers := 0
		for labels, w := range want {
			if !hasLabel(labels, "service", service) {
				continue
			}
			servers++
			if w == 0 || got[labels] != w {
				return fmt.Errorf("%s: %s %v, %s %v", labels, ebpf, got[labels], kernel, w)
			}
		}
		if servers != 3 {
			return fmt.Errorf("%d servers of %s in %s (merlin_ipvs_stats_up %v)", servers, service, kernel, c.series(n, "merlin_ipvs_stats_up"))
		}
		return nil
	})
}

func (c *cluster) compareServices(n *lab.Node, service, ebpf, kernel string) {
	c.t.Helper()
	c.eventually(fmt.Sprintf("%s = %s for %s on %s", ebpf, kernel, service, n.Name), 20*time.Second, func() error {
		got, want := c.series(n, ebpf)["service="+service], c.series(n, kernel)["service="+service]
		if want == 0 || got != want {
			return fmt.Errorf("%s %v, %s %v", ebpf, got, kernel, want)
		}
		return nil
	})
}

func (c *cluster) expectSum(n *lab.Node, metric, service string, want float64) {
	c.t.Helper()
	c.eventually(fmt.Sprintf("%s of %s on %s", metric, service, n.Name), 20*time.Second, func() error {
		if got := sumService(c.series(n, metric), service); got != want {
			return fmt.Errorf("%s %v, want %v", metric, got, want)
		}
		return nil
	})
}

func sumService(s map[string]float64, service string) float64 {
	total := 0.0
	for labels, v := range s {
		if hasLabel(labels, "service", service) {
			total += v
		}
	}
	return total
}

// hasLabel: a lab.Series key has the label.
func hasLabel(labels, name, value string) bool {
	return strings.Contains(","+labels+",", ","+name+"="+value+",")
}
