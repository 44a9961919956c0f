package cluster

import (
	"fmt"
	"net"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/merlin-ipvs/merlin/vmtests/lab"
)

// syncArgs turn connection sync on: master and backup daemons on the
// node's link to the bridge, one sync ID for the cluster.
var syncArgs = []string{"-sync-interface", "eth0", "-sync-id", "5"}

// TestVMConnSync: a direct-routing service scheduled with wlc, its client
// connections carried by node2; the router moves the VIP to node1 (as it
// does when node2 dies). Without connection sync node1 schedules each
// moved flow afresh and most land on another real server, which resets
// them. With sync (both daemons on every node) node1 already holds every
// connection node2 made: none is reset. A daemon stopped behind merlin's
// back is put back.
func TestVMConnSync(t *testing.T) {
	c := setUp(t)
	node1, node2 := c.Nodes[0], c.Nodes[1]
	vip := lab.DRVIP + ":80"
	c.mustMeradm("service", "add", "dr", "tcp", vip, "-s", "wlc", "--forward-method", "route",
		"--health-endpoint", "tcp://:8080", "--health-period", "1s", "--health-timeout", "1s", "--health-up", "1", "--health-down", "1")
	for i := range 3 {
		c.mustMeradm("server", "add", "dr", lab.BackendAddr(i)+":80")
	}
	c.waitTables("both nodes programmed", "-a -t "+vip+" -r "+lab.BackendAddr(2)+":80 -g -w 1")

	t.Run("without sync, moved flows are reset", func(t *testing.T) {
		conns := c.openVia(node2, vip, 30)
		failed := c.moveVIP(node1, conns)
		t.Logf("without connection sync: %d of %d moved connections failed", failed, len(conns))
		if failed == 0 { // each lands on its own server with chance 1/3: all 30, (1/3)^30
			t.Errorf("no moved connection failed without sync: the test shows nothing")
		}
		c.moveVIPBack(node2)
	})

	for _, n := range c.Nodes {
		c.stopNode(n, syscall.SIGTERM)
		n.Args = append(n.Args, syncArgs...)
		c.startNode(n)
	}
	for _, n := range c.Nodes {
		c.waitReady(n)
		c.waitSyncDaemons(n)
	}
	if out := c.mustMeradm("status"); !strings.Contains(out, "node1: connection sync on eth0 (sync id 5): master running, backup running") {
		t.Errorf("status does not show connection sync:\n%s", out)
	}

	t.Run("with sync, none is", func(t *testing.T) {
		conns := c.openVia(node2, vip, 30)
		c.eventually("node1 to hold node2's connections (synced)", 30*time.Second, func() error {
			table := nsRun(t, node1.NS, "ipvsadm", "-Lnc")
			for _, conn := range conns {
				if port := conn.LocalAddr().(*net.TCPAddr).Port; !strings.Contains(table, fmt.Sprintf(":%d ", port)) {
					return fmt.Errorf("no entry for client port %d:\n%s", port, table)
				}
			}
			return nil
		})
		if failed := c.moveVIP(node1, conns); failed != 0 {
			t.Errorf("with connection sync: %d of %d moved connections failed, want none", failed, len(conns))
		}
		c.moveVIPBack(node2)
	})

	t.Run("a daemon stopped behind merlin's back", func(t *testing.T) {
		nsRun(t, node1.NS, "ipvsadm", "--stop-daemon", "backup")
		c.eventually("node1's backup daemon put back", 30*time.Second, func() error {
			if out := nsRun(t, node1.NS, "ipvsadm", "-L", "--daemon"); !strings.Contains(out, "backup sync daemon") {
				return fmt.Errorf("ipvsadm -L --daemon:\n%s", out)
			}
			if n := c.metric(node1, "merlin_ipvs_sync_daemon_restored_total"); n < 1 {
				return fmt.Errorf("merlin_ipvs_sync_daemon_restored_total %v", n)
			}
			return nil
		})
	})
}

// waitSyncDaemons waits for both sync daemons on a node.
func (c *cluster) waitSyncDaemons(n *lab.Node) {
	c.t.Helper()
	c.eventually(n.Name+"'s sync daemons", 60*time.Second, func() error {
		out := nsRun(c.t, n.NS, "ipvsadm", "-L", "--daemon")
		if !strings.Contains(out, "master sync daemon (mcast=eth0, syncid=5") || !strings.Contains(out, "backup sync daemon (mcast=eth0, syncid=5") {
			return fmt.Errorf("ipvsadm -L --daemon:\n%s", out)
		}
		return nil
	})
}

// openVia opens k client connections through the VIP, each carried by
// node n (the lab routes the DR VIP to node2), each echoing once.
func (c *cluster) openVia(n *lab.Node, addr string, k int) []net.Conn {
	c.t.Helper()
	var conns []net.Conn
	c.t.Cleanup(func() {
		for _, conn := range conns {
			conn.Close()
		}
	})
	for range k {
		conns = append(conns, c.longLivedVia(n, addr))
	}
	return conns
}

// moveVIP routes the DR VIP to node n, as a router does when the node that
// carried it dies, and counts the connections that no longer echo.
func (c *cluster) moveVIP(n *lab.Node, conns []net.Conn) int {
	c.t.Helper()
	c.must(exec.Command("ip", "route", "replace", lab.DRVIP+"/32", "via", n.Addr).Run())
	failed := 0
	for i, conn := range conns {
		if err := echo(conn, fmt.Sprintf("after the move %d", i)); err != nil {
			failed++
		}
	}
	return failed
}

func (c *cluster) moveVIPBack(n *lab.Node) {
	c.t.Helper()
	c.must(exec.Command("ip", "route", "replace", lab.DRVIP+"/32", "via", n.Addr).Run())
}
