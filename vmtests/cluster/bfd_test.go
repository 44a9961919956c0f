package cluster

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/merlin-ipvs/merlin/vmtests/lab"
)

// TestVMBFD: two nodes peer with the lab's router with BFD (300 ms × 3;
// BGP hold time 9 s), bird2 and then FRR (bgpd, bfdd, with the README's
// router lines). A cut link and a frozen node (merlin and its speaker
// stopped; the kernel still forwards) each leave the router's ECMP route
// by BFD — the router says so, not a hold timer — while a client connects
// ten times a second through the VIP; the time to the route change and the
// failed connections are logged. So is merlin SIGKILLed (the kernel closes
// its sessions). A planned restart, drained first, fails
// no connection.
func TestVMBFD(t *testing.T) {
	for _, frr := range []bool{false, true} {
		t.Run(map[bool]string{false: "bird2", true: "FRR"}[frr], func(t *testing.T) { testBFD(t, frr) })
	}
}

func testBFD(t *testing.T, frr bool) {
	c := setUpWith(t, func(n *lab.Node) []string { return lab.BGPArgs(n, "bfd") })
	node1, node2 := c.Nodes[0], c.Nodes[1]
	both := []string{node1.Addr, node2.Addr}
	c.must(exec.Command("ip", "route", "del", lab.DRVIP+"/32").Run())
	c.RouterBFD = true
	start := c.StartRouter
	if frr {
		start = c.StartFRRRouter
	}
	r, err := start()
	c.must(err)
	t.Cleanup(r.Stop)
	t.Cleanup(func() { // before the router stops: what it held
		if !t.Failed() {
			return
		}
		if frr {
			for _, cmd := range []string{"show bgp ipv4 unicast " + lab.DRVIP, "show bgp summary", "show bfd peers brief"} {
				out, _ := r.Vtysh(cmd)
				t.Logf("FRR: %s\n%s", cmd, out)
			}
		} else {
			out, _ := r.Birdc("show", "route", "all", "for", lab.DRVIP)
			t.Logf("bird: show route all for %s\n%s", lab.DRVIP, out)
		}
		out, _ := c.meradm("status")
		t.Logf("meradm status:\n%s", out)
	})
	vip := lab.DRVIP + ":80"
	c.mustMeradm("service", "add", "dr", "tcp", vip, "-s", "mh", "-b", "mh-fallback", "--forward-method", "route",
		"--health-endpoint", "tcp://:8080", "--health-period", "1s", "--health-timeout", "1s", "--health-up", "1", "--health-down", "1")
	for i := range 3 {
		c.mustMeradm("server", "add", "dr", lab.BackendAddr(i)+":80")
	}
	c.must(r.WaitNextHops(lab.DRVIP, 90*time.Second, both...))
	for _, n := range c.Nodes {
		c.eventually("BFD up on "+n.Name, 30*time.Second, func() error {
			if up := c.metric(n, "merlin_bfd_session_up"); up != 1 {
				return fmt.Errorf("merlin_bfd_session_up %v", up)
			}
			return nil
		})
	}
	// A BFD session comes up at the slow rate (1 s, RFC 5880 6.8.3) and
	// moves to the configured one by a poll sequence after: wait for it.
	c.eventually("status shows BFD at the configured rate", 30*time.Second, func() error {
		if out := c.mustMeradm("status"); !strings.Contains(out, "bfd up (300ms, detects in 900ms)") {
			return fmt.Errorf("status does not show BFD:\n%s", out)
		}
		return nil
	})

	t.Run("a cut link", func(t *testing.T) {
		c.failOver(r, node1, node2.Addr, true, func() { c.must(exec.Command("ip", "link", "set", node1.Link, "down").Run()) })
		c.must(exec.Command("ip", "link", "set", node1.Link, "up").Run())
		c.must(r.WaitNextHops(lab.DRVIP, 90*time.Second, both...))
	})

	// A planned restart with BFD: bird takes the AdminDown as a failure, so
	// the node is drained first (README); no client connection fails, and a
	// long-lived connection node1 carried keeps working through node2.
	t.Run("a planned restart, drained first", func(t *testing.T) {
		long := c.longLivedVia(node1, vip)
		defer long.Close()
		tr := c.startTraffic(vip)
		c.mustMeradm("node", "drain", node1.Name, "--withdraw-after", "3s")
		c.must(r.WaitNextHops(lab.DRVIP, 60*time.Second, node2.Addr))
		c.stopNode(node1, syscall.SIGTERM)
		c.startNode(node1)
		c.waitReady(node1)
		c.mustMeradm("node", "undrain", node1.Name)
		c.must(r.WaitNextHops(lab.DRVIP, 90*time.Second, both...))
		c.must(echo(long, "after node1's restart"))
		if ok, fail, lastErr := tr.Finish(); fail != 0 || ok == 0 {
			t.Errorf("%d client connections failed (of %d; last: %v), want none", fail, ok+fail, lastErr)
		}
	})

	// merlin SIGKILLed: its speaker dies with it (Pdeathsig) and the
	// kernel closes the sessions, which the router sees before BFD does
	// (without graceful restart, as here, it drops the routes at once).
	t.Run("merlin killed", func(t *testing.T) {
		c.failOver(r, node1, node2.Addr, false, func() { c.stopNode(node1, syscall.SIGKILL) })
		c.startNode(node1)
		c.waitReady(node1)
		c.must(r.WaitNextHops(lab.DRVIP, 90*time.Second, both...))
	})

	t.Run("a frozen node", func(t *testing.T) {
		pids := processTree(node1.Pid())
		c.failOver(r, node1, node2.Addr, true, func() { signalAll(t, pids, syscall.SIGSTOP) })
		signalAll(t, pids, syscall.SIGCONT)
		c.must(r.WaitNextHops(lab.DRVIP, 90*time.Second, both...))
		c.eventually("node1's BFD back up", 30*time.Second, func() error {
			if up := c.metric(node1, "merlin_bfd_session_up"); up != 1 {
				return fmt.Errorf("merlin_bfd_session_up %v", up)
			}
			return nil
		})
	})
}

// failOver breaks a node with breakIt under client traffic and waits for
// the router's route to go via the survivor only, checking (byBFD) that
// BFD took the session down; it logs the time that took and the failed
// connections.
func (c *cluster) failOver(r *lab.Router, gone *lab.Node, survivor string, byBFD bool, breakIt func()) {
	c.t.Helper()
	c.eventually("BFD up on "+gone.Name+" before it breaks", 60*time.Second, func() error {
		if up := c.metric(gone, "merlin_bfd_session_up"); up != 1 {
			return fmt.Errorf("merlin_bfd_session_up %v", up)
		}
		if up, err := r.BFDUp(gone); !up || err != nil {
			return fmt.Errorf("the router's BFD with %s not up (%v)", gone.Name, err)
		}
		return nil
	})
	tr := c.startTraffic(lab.DRVIP + ":80")
	c.eventually("the client's connections to work", 30*time.Second, func() error {
		if ok, _ := tr.Counts(); ok < 3 {
			return fmt.Errorf("%d connections so far", ok)
		}
		return nil
	})
	start := time.Now()
	breakIt()
	c.must(r.WaitNextHops(lab.DRVIP, 60*time.Second, survivor))
	took := time.Since(start)
	ok, fail, lastErr := tr.Finish()
	dropped, out, err := r.DroppedByBFD(gone)
	c.must(err)
	if byBFD && !dropped {
		c.t.Errorf("the router did not take %s's session down by BFD:\n%s", gone.Name, out)
	}
	c.t.Logf("%s out of the route after %s (BFD 300ms × 3, hold time 9s); client: %d connections, %d failed (last: %v)",
		gone.Name, took.Round(10*time.Millisecond), ok, fail, lastErr)
}

// processTree is pid and its descendants.
func processTree(pid int) []int {
	out := []int{pid}
	entries, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, e := range entries {
		b, err := os.ReadFile(e)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
		rest := string(b[strings.LastIndexByte(string(b), ')')+1:])
		f := strings.Fields(rest)
		if len(f) > 1 {
			if ppid, _ := strconv.Atoi(f[1]); ppid == pid {
				child, _ := strconv.Atoi(filepath.Base(filepath.Dir(e)))
				out = append(out, processTree(child)...)
			}
		}
	}
	return out
}

func signalAll(t *testing.T, pids []int, sig syscall.Signal) {
	for _, p := range pids {
		if err := syscall.Kill(p, sig); err != nil {
			t.Fatalf("signal %d: %v", p, err)
		}
	}
}
