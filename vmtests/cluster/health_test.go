package cluster

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/merlin-ipvs/merlin/vmtests/lab"
)

// weights reads each real server's weight of a service from a node's table
// (the value after -w: tunnel servers' lines go on after it).
func (c *cluster) weights(n *lab.Node, vip string) map[string]int {
	c.t.Helper()
	out := c.table(n)
	got := map[string]int{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if i := slices.Index(f, "-w"); len(f) >= 8 && f[0] == "-a" && f[2] == vip && i > 0 && i+1 < len(f) {
			w, _ := strconv.Atoi(f[i+1])
			got[f[4]] = w
		}
	}
	return got
}

func (c *cluster) waitWeight(vip, server string, want int) time.Duration {
	c.t.Helper()
	start := time.Now()
	for _, n := range c.Nodes {
		c.eventually(fmt.Sprintf("%s weight %d on %s", server, want, n.Name), 60*time.Second, func() error {
			if w := c.weights(n, vip); w[server] != want {
				return fmt.Errorf("weights %v", w)
			}
			return nil
		})
	}
	return time.Since(start)
}

func TestVMHealthChecks(t *testing.T) {
	c := setUp(t)
	const (
		interval = time.Second
		timeout  = 500 * time.Millisecond
		fall     = 2
		rise     = 2
	)
	vip := lab.NATVIP + ":80"
	// The check is the service's default: every server inherits it.
	c.mustMeradm("service", "add", "web", "tcp", vip, "-s", "rr", "--forward-method", "masq",
		"--health-endpoint", "tcp://:8080", "--health-period", interval.String(), "--health-timeout", timeout.String(),
		"--health-up", strconv.Itoa(rise), "--health-down", strconv.Itoa(fall))
	for i := range 3 {
		c.mustMeradm("server", "add", "web", lab.BackendAddr(i)+":8080")
	}
	b2 := lab.BackendAddr(1) + ":8080"
	c.waitWeight(vip, b2, 1)

	t.Run("a dead backend gets weight 0 on every node", func(t *testing.T) {
		c.StopBackend(1)
		took := c.waitWeight(vip, b2, 0)
		bound := fall*interval + timeout + time.Second
		t.Logf("weight 0 on both nodes %s after the listener closed (fall × interval + timeout + 1 s = %s)", took.Round(100*time.Millisecond), bound)
		if got := c.tally(vip, 12); got["backend2"] != 0 || len(got) != 2 {
			t.Fatalf("new connections reached the dead backend: %v", got)
		}
		out := c.mustMeradm("status")
		for _, n := range c.Nodes {
			if !strings.Contains(out, n.Name+": server web/"+b2+" down, weight 0") {
				t.Fatalf("status does not show the down server on %s:\n%s", n.Name, out)
			}
		}
		c.must(c.StartBackend(1))
		took = c.waitWeight(vip, b2, 1)
		t.Logf("weight back %s after the listener reopened (rise %d × interval %s)", took.Round(100*time.Millisecond), rise, interval)
	})

	t.Run("a restart changes no weight and drops no connection", func(t *testing.T) {
		before := []string{c.table(c.Nodes[0]), c.table(c.Nodes[1])}
		tr := c.startTraffic(vip)
		n := c.Nodes[0]
		c.stopNode(n, syscall.SIGKILL)
		c.startNode(n)
		unchanged := func() {
			if got := c.table(n); got != before[0] {
				t.Fatalf("table changed across the restart:\n%s\nwas:\n%s", got, before[0])
			}
		}
		// Watch through readiness and three rounds of rise probes of each
		// of the 3 checks after it.
		c.eventually("ready after the restart", 90*time.Second, func() error { unchanged(); return c.Ready(n) })
		probes := c.metric(n, "merlin_health_check_duration_seconds_count")
		c.eventually("probes after readiness", 90*time.Second, func() error {
			unchanged()
			if got := c.metric(n, "merlin_health_check_duration_seconds_count") - probes; got < 3*3*rise {
				return fmt.Errorf("%v probes since ready", got)
			}
			return nil
		})
		if got := c.table(c.Nodes[1]); got != before[1] {
			t.Fatalf("node2's table changed:\n%s", got)
		}
		if ok, fail, lastErr := tr.Finish(); fail != 0 {
			t.Fatalf("client connections during the restart: %d ok, %d failed (%v)", ok, fail, lastErr)
		}
		if w := c.opsWritten(n); w != 0 {
			t.Fatalf("restarted merlin wrote %d IPVS ops with every backend healthy", w)
		}
	})

	t.Run("slow start ramps the weight", func(t *testing.T) {
		c.mustMeradm("server", "edit", "web", b2, "-w", "10", "--slow-start", "8s")
		c.waitWeight(vip, b2, 10)
		c.StopBackend(1)
		c.waitWeight(vip, b2, 0)
		c.must(c.StartBackend(1))
		seen := map[int]bool{}
		c.eventually("full weight after slow start", 60*time.Second, func() error {
			w := c.weights(c.Nodes[0], vip)[b2]
			seen[w] = true
			if w != 10 {
				return fmt.Errorf("weight %d", w)
			}
			return nil
		})
		var between []int
		for w := range seen {
			if w > 0 && w < 10 {
				between = append(between, w)
			}
		}
		if len(between) == 0 {
			t.Fatalf("no intermediate weight seen during slow start: %v", seen)
		}
		t.Logf("weights seen during slow start: %v", between)
	})

	// Three servers of two services share backend1's check (its address
	// and :8080); one is at weight 0. merlin is killed, that one raised to
	// 7 meanwhile, merlin started again: nothing that served stops
	// serving, the raised one comes up with the check (it is up). Then the
	// check down: killed and restarted, all three stay down until it
	// passes again.
	t.Run("a restart takes no serving server out", func(t *testing.T) {
		b1 := lab.BackendAddr(0)
		for _, svc := range []struct{ id, port string }{{"g1", "81"}, {"g2", "82"}} {
			c.mustMeradm("service", "add", svc.id, "tcp", lab.NATVIP+":"+svc.port, "-s", "rr", "--forward-method", "masq",
				"--health-endpoint", "tcp://:8080", "--health-period", interval.String(), "--health-timeout", timeout.String(),
				"--health-up", strconv.Itoa(rise), "--health-down", strconv.Itoa(fall))
		}
		c.mustMeradm("server", "add", "g1", b1+":8080", "-w", "5")
		c.mustMeradm("server", "add", "g1", b1+":8081", "-w", "0")
		c.mustMeradm("server", "add", "g2", b1+":8082", "-w", "5")
		g1, g2 := lab.NATVIP+":81", lab.NATVIP+":82"
		c.waitWeight(g1, b1+":8080", 5)
		c.waitWeight(g2, b1+":8082", 5)
		n := c.Nodes[0]
		c.stopNode(n, syscall.SIGKILL)
		c.mustMeradm("-H", c.Nodes[1].Addr, "server", "edit", "g1", b1+":8081", "-w", "7") // through node2
		c.startNode(n)
		c.eventually("the raised server at 7 on the restarted node", 90*time.Second, func() error {
			w1, w2 := c.weights(n, g1), c.weights(n, g2)
			if w1[b1+":8080"] != 5 || w2[b1+":8082"] != 5 {
				t.Fatalf("a serving server lost its weight across the restart: g1 %v, g2 %v", w1, w2)
			}
			if w1[b1+":8081"] != 7 {
				return fmt.Errorf("g1 %v", w1)
			}
			return nil
		})

		c.StopBackend(0)
		c.waitWeight(g1, b1+":8081", 0)
		c.waitWeight(g2, b1+":8082", 0)
		c.stopNode(n, syscall.SIGKILL)
		c.startNode(n)
		stillDown := func() {
			w1, w2 := c.weights(n, g1), c.weights(n, g2)
			if w1[b1+":8080"] != 0 || w1[b1+":8081"] != 0 || w2[b1+":8082"] != 0 {
				t.Fatalf("a server merlin had taken down came back without its check: g1 %v, g2 %v", w1, w2)
			}
		}
		c.eventually("ready after the restart", 90*time.Second, func() error { stillDown(); return c.Ready(n) })
		probes := c.metric(n, "merlin_health_check_duration_seconds_count")
		c.eventually("rise probes after the restart, the servers still down", 90*time.Second, func() error {
			stillDown()
			if got := c.metric(n, "merlin_health_check_duration_seconds_count") - probes; got < 3*rise {
				return fmt.Errorf("%v probes since the restart", got)
			}
			return nil
		})
		c.must(c.StartBackend(0))
		c.waitWeight(g1, b1+":8081", 7)
		c.waitWeight(g2, b1+":8082", 5)
	})
}
