package cluster

import (
	"fmt"
	"net"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/merlin-ipvs/merlin/vmtests/lab"
)

// TestVMServerDrain: a real server carrying long-lived connections through
// both nodes (the router spreads the client's connections by ECMP) is
// drained with --then delete. It takes no new connection; merlin on node1
// restarts in the middle and nothing changes; the drain goes on while
// node2 still carries one (node1's is closed), and completes — deleting
// the server on both nodes — once the last one ends. A drain with a
// deadline ends at the deadline, its connection still open, and `meradm
// server drain --wait` follows it to the end.
func TestVMServerDrain(t *testing.T) {
	// Graceful restart: the router keeps node1's route while it restarts.
	c := setUpWith(t, func(n *lab.Node) []string { return lab.BGPArgs(n, "graceful_restart=60s") })
	node1, node2 := c.Nodes[0], c.Nodes[1]
	c.must(exec.Command("ip", "route", "del", lab.DRVIP+"/32").Run())
	r, err := c.StartRouter()
	c.must(err)
	t.Cleanup(r.Stop)
	vip := lab.DRVIP + ":80"
	c.mustMeradm("service", "add", "dr", "tcp", vip, "-s", "wlc", "--forward-method", "route",
		"--health-endpoint", "tcp://:8080", "--health-period", "1s", "--health-timeout", "1s", "--health-up", "1", "--health-down", "1")
	for i := range c.Backends {
		c.mustMeradm("server", "add", "dr", lab.BackendAddr(i)+":80")
	}
	c.waitServersUp(vip, len(c.Backends))
	c.must(r.WaitNextHops(lab.DRVIP, 90*time.Second, node1.Addr, node2.Addr))
	drained := lab.BackendAddr(0) + ":80"
	via1, via2 := c.connectionTo(vip, "backend1", node1), c.connectionTo(vip, "backend1", node2)
	defer via1.Close()
	defer via2.Close()

	c.mustMeradm("server", "drain", "dr", drained, "--then", "delete")
	c.waitDrain("both nodes counting their connection", drained, func(line string) bool {
		return strings.Contains(line, "node1 1 active") && strings.Contains(line, "node2 1 active")
	})
	for name, n := range c.tally(vip, 20) {
		if name == "backend1" {
			t.Fatalf("%d of 20 new connections reached the drained server", n)
		}
	}

	// A restart of merlin in the middle changes nothing.
	c.stopNode(node1, syscall.SIGTERM)
	c.startNode(node1)
	c.waitReady(node1)
	c.must(echo(via1, "after node1's restart"))
	c.waitDrain("node1 counting again after its restart", drained, func(line string) bool {
		return strings.Contains(line, "node1 1 active") && strings.Contains(line, "node2 1 active")
	})

	// node1's connection ends (a reset: no TIME_WAIT to outlast): the drain
	// waits for node2's.
	resetConn(via1)
	c.waitDrain("node1 at 0, node2 still carrying one", drained, func(line string) bool {
		return strings.Contains(line, "node1 0") && strings.Contains(line, "node2 1 active")
	})
	c.must(echo(via2, "still served while draining"))
	resetConn(via2)
	c.eventually("the drain over and the server deleted everywhere", 60*time.Second, func() error {
		if out := c.mustMeradm("status"); strings.Contains(out, "server drain: dr "+drained) {
			return fmt.Errorf("still draining:\n%s", out)
		}
		for _, n := range c.Nodes {
			if tb := c.table(n); strings.Contains(tb, "-r "+drained) {
				return fmt.Errorf("%s still has it:\n%s", n.Name, tb)
			}
		}
		return nil
	})

	// A deadline ends a drain with its connection still open.
	second := lab.BackendAddr(1) + ":80"
	open := c.connectionTo(vip, "backend2", nil)
	defer open.Close()
	out := c.mustMeradm("server", "drain", "dr", second, "--deadline", "10s", "--wait", "--wait-interval", "1s")
	t.Logf("meradm server drain --wait:\n%s", out)
	// The counts depend on what else the client left open: a live
	// connection counted is what matters.
	if !strings.Contains(out, "drain ended by its deadline after 1") || !regexp.MustCompile(`node\d [1-9]\d* active`).MatchString(out) {
		t.Fatalf("--wait did not follow the drain to its deadline:\n%s", out)
	}
	c.must(echo(open, "open after the deadline"))
	if tb := c.table(node2); !strings.Contains(tb, "-r "+second+" -g -w 0") {
		t.Errorf("after the deadline the server is not kept at weight 0:\n%s", tb)
	}
}

// connectionTo opens client connections until one reaches the backend
// named name through node via (nil: any node), and returns it.
func (c *cluster) connectionTo(addr, name string, via *lab.Node) net.Conn {
	c.t.Helper()
	for range 60 {
		conn, got, err := c.connect(addr)
		c.must(err)
		port := fmt.Sprintf(":%d ", conn.LocalAddr().(*net.TCPAddr).Port)
		if got == name && (via == nil || strings.Contains(nsRun(c.t, via.NS, "ipvsadm", "-Lnc"), port)) {
			c.must(echo(conn, "hello"))
			return conn
		}
		resetConn(conn)
	}
	c.t.Fatalf("none of 60 connections reached %s through %v", name, via)
	return nil
}

// resetConn closes with a reset: IPVS forgets the connection after its
// CLOSE timeout (10 s) instead of TIME_WAIT's 2 minutes.
func resetConn(conn net.Conn) {
	_ = conn.(*net.TCPConn).SetLinger(0)
	conn.Close()
}

// waitDrain waits for meradm status's line about the drain of server to
// satisfy cond.
func (c *cluster) waitDrain(what, server string, cond func(string) bool) {
	c.t.Helper()
	c.eventually(what, 60*time.Second, func() error {
		out := c.mustMeradm("status")
		for _, line := range strings.Split(out, "\n") {
			if strings.HasPrefix(line, "server drain: dr "+server) && cond(line) {
				return nil
			}
		}
		return fmt.Errorf("status:\n%s", out)
	})
}
