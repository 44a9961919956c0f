package cluster

import (
	"os/exec"
	"testing"

	"github.com/merlin-ipvs/merlin/vmtests/lab"
)

// TestVMPathCheck: checks through the VIP (TCP, and UDP for direct
// routing). A direct-routing backend loses
// the VIP from its loopback while its application keeps listening, and an
// IPIP backend loses its tunnel device (tunl0 down): a plain check of the
// same backend (its own address) stays green, the check through the VIP
// takes it down within fall × period on every node, and no new connection
// reaches it; back, they come up again.
func TestVMPathCheck(t *testing.T) {
	c := setUp(t)
	check := []string{"--health-period", "1s", "--health-timeout", "1s", "--health-up", "1", "--health-down", "2"}
	for i, b := range c.Backends {
		c.must(c.EnableTunnel(i))
		c.must(c.ServeTCP(i, lab.TunVIP+":80"))
		c.must(c.ServeUDP(i, lab.DRVIP+":53"))
		// A real server does not forward (the lab's namespaces inherit the
		// router's forwarding): one that did would pass a packet for a VIP
		// it lacks on to its gateway — a node — and another server would
		// answer it.
		nsRun(t, b, "sysctl", "-qw", "net.ipv4.ip_forward=0")
	}
	dr, tun := lab.DRVIP+":80", lab.TunVIP+":80"
	c.must(exec.Command("ip", "route", "add", lab.TunVIP+"/32", "via", c.Nodes[1].Addr).Run()) // as the DR VIP
	c.mustMeradm(append([]string{"service", "add", "dr", "tcp", dr, "-s", "rr", "--forward-method", "route",
		"--health-endpoint", "tcp://:80", "--health-through-vip"}, check...)...)
	c.mustMeradm(append([]string{"service", "add", "tun", "tcp", tun, "-s", "rr", "--forward-method", "tunnel",
		"--health-endpoint", "tcp://:80", "--health-through-vip"}, check...)...)
	c.mustMeradm(append([]string{"service", "add", "dru", "udp", lab.DRVIP + ":53", "-s", "rr", "--forward-method", "route",
		"--health-endpoint", "udp://:53", "--health-udp-send", "ping", "--health-through-vip"}, check...)...)
	// The plain check of the same backends, at their own address.
	c.mustMeradm(append([]string{"service", "add", "plain", "tcp", lab.DRVIP + ":81", "-s", "rr", "--forward-method", "route",
		"--health-endpoint", "tcp://:8080"}, check...)...)
	for i := range c.Backends {
		for _, svc := range []string{"dr", "tun", "plain", "dru"} {
			addr := lab.BackendAddr(i) + map[string]string{"plain": ":81", "dru": ":53"}[svc]
			if svc == "dr" || svc == "tun" {
				addr = lab.BackendAddr(i) + ":80"
			}
			c.mustMeradm("server", "add", svc, addr)
		}
	}
	for _, vip := range []string{dr, tun, lab.DRVIP + ":81", lab.DRVIP + ":53"} {
		c.waitServersUpProto(vip, len(c.Backends))
	}

	t.Run("direct routing: the VIP gone from the backend's loopback", func(t *testing.T) {
		nsRun(t, c.Backends[0], "ip", "addr", "del", lab.DRVIP+"/32", "dev", "lo")
		c.waitWeight(dr, lab.BackendAddr(0)+":80", 0)
		c.waitWeight(lab.DRVIP+":53", lab.BackendAddr(0)+":53", 0) // the UDP check too
		if w := c.weights(c.Nodes[0], lab.DRVIP+":81")[lab.BackendAddr(0)+":81"]; w != 1 {
			t.Errorf("the plain check took the backend down too (weight %d): it should not see the broken path", w)
		}
		for name := range c.tally(dr, 20) {
			if name == "backend1" {
				t.Errorf("a new connection reached the backend without the VIP")
			}
		}
		nsRun(t, c.Backends[0], "ip", "addr", "add", lab.DRVIP+"/32", "dev", "lo")
		c.waitWeight(dr, lab.BackendAddr(0)+":80", 1)
		c.waitWeight(lab.DRVIP+":53", lab.BackendAddr(0)+":53", 1)
	})
	t.Run("tunnel: the backend's tunnel device down", func(t *testing.T) {
		nsRun(t, c.Backends[1], "ip", "link", "set", "tunl0", "down")
		c.waitWeight(tun, lab.BackendAddr(1)+":80", 0)
		if w := c.weights(c.Nodes[0], lab.DRVIP+":81")[lab.BackendAddr(1)+":81"]; w != 1 {
			t.Errorf("the plain check took the backend down too (weight %d)", w)
		}
		for name := range c.tally(tun, 20) {
			if name == "backend2" {
				t.Errorf("a new connection reached the backend without its tunnel")
			}
		}
		nsRun(t, c.Backends[1], "ip", "link", "set", "tunl0", "up")
		c.waitWeight(tun, lab.BackendAddr(1)+":80", 1)
	})
	out := c.mustMeradm("status")
	t.Logf("status:\n%s", out)
}
