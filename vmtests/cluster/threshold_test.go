package cluster

import (
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/merlin-ipvs/merlin/vmtests/lab"
)

const (
	thresholdServers = 10 // in the service; one more backend is the sorry server
	thresholdDown    = 6  // of them taken down: below 50 %
	holdDown         = 6 * time.Second
)

// TestVMHealthyThreshold: ten DR servers, threshold 50 % with a 6 s
// hold-down, two nodes behind bird2. With six servers down: keep-serving
// spreads new connections over the four left; sorry sends them all to the
// sorry server; withdraw takes the VIP out of the router. While the six
// flap (down and up every 2 s for 24 s) the router's route to the VIP
// changes at most once per hold-down.
func TestVMHealthyThreshold(t *testing.T) {
	c := setUpLab(t, lab.Config{Backends: thresholdServers + 1, NodeArg: func(n *lab.Node) []string { return lab.BGPArgs(n, "") }})
	c.must(exec.Command("ip", "route", "del", lab.DRVIP+"/32").Run())
	r, err := c.StartRouter()
	c.must(err)
	t.Cleanup(r.Stop)
	vip := lab.DRVIP + ":80"
	c.mustMeradm("service", "add", "dr", "tcp", vip, "-s", "wrr", "--forward-method", "route",
		"--health-endpoint", "tcp://:8080", "--health-period", "1s", "--health-timeout", "1s", "--health-up", "1", "--health-down", "1",
		"--healthy-percent", "50", "--healthy-hold-down", holdDown.String(), "--below", "keep")
	for i := range thresholdServers {
		c.mustMeradm("server", "add", "dr", lab.BackendAddr(i)+":80")
	}
	c.waitServersUp(vip, thresholdServers)
	both := []string{c.Nodes[0].Addr, c.Nodes[1].Addr}
	c.must(r.WaitNextHops(lab.DRVIP, 90*time.Second, both...))
	down := func(stop bool) {
		for i := range thresholdDown {
			if stop {
				c.StopBackend(i)
			} else {
				c.must(c.StartBackend(i))
			}
		}
	}

	t.Run("keep serving", func(t *testing.T) {
		down(true)
		c.waitBelow("keep serving")
		for name := range c.tally(vip, 40) {
			if n := backendIndex(name); n < thresholdDown || n >= thresholdServers {
				t.Errorf("a new connection reached %s, not one of the four left", name)
			}
		}
		down(false)
		c.waitServersUp(vip, thresholdServers)
	})
	t.Run("sorry", func(t *testing.T) {
		sorry := lab.BackendAddr(thresholdServers) + ":80"
		c.mustMeradm("service", "edit", "dr", "--below", "sorry", "--sorry-server", sorry)
		down(true)
		c.waitBelow("sorry")
		if got := c.tally(vip, 20); got[fmt.Sprintf("backend%d", thresholdServers+1)] != 20 {
			t.Errorf("below the threshold, connections went to %v, want all to the sorry server", got)
		}
		down(false)
		c.waitServersUp(vip, thresholdServers)
	})
	t.Run("withdraw, flapping", func(t *testing.T) {
		c.mustMeradm("service", "edit", "dr", "--below", "withdraw", "--sorry-server", "")
		c.must(r.WaitNextHops(lab.DRVIP, 90*time.Second, both...))
		changes := c.countRouteChanges(r, lab.DRVIP)
		flapFor := 24 * time.Second
		for i := 0; i < int(flapFor/(2*time.Second)); i++ {
			down(i%2 == 0)
			time.Sleep(2 * time.Second) // the flapping itself, not a wait for an outcome
		}
		down(true)
		c.waitBelow("withdraw")
		c.must(r.WaitNextHops(lab.DRVIP, 60*time.Second))
		n, log := changes()
		t.Logf("the route changed %d times in %s of flapping and after: %s", n, flapFor, log)
		// Each node may change once per hold-down; the route follows the
		// union of both nodes, and the last change is the withdrawal.
		if limit := 2*int(flapFor/holdDown) + 2; n > limit {
			t.Errorf("the route changed %d times, more than once per hold-down per node (%d)", n, limit)
		}
		down(false)
		c.must(r.WaitNextHops(lab.DRVIP, 90*time.Second, both...))
	})
}

// waitBelow waits until every node says the service is below its
// threshold with action.
func (c *cluster) waitBelow(action string) {
	c.t.Helper()
	c.eventually("dr below its threshold on every node ("+action+")", 60*time.Second, func() error {
		out := c.mustMeradm("status")
		for _, n := range c.Nodes {
			if !strings.Contains(out, n.Name+": service dr below its healthy threshold (4 of 10 servers up, needs 5)") || !strings.Contains(out, ": "+action) {
				return fmt.Errorf("status:\n%s", out)
			}
		}
		return nil
	})
}

func backendIndex(name string) int {
	var n int
	fmt.Sscanf(name, "backend%d", &n)
	return n - 1
}

// countRouteChanges samples the router's next hops for addr every 100 ms
// until the returned function is called, which reports how often they
// changed, and how.
func (c *cluster) countRouteChanges(r *lab.Router, addr string) func() (int, string) {
	stop, done := make(chan struct{}), make(chan struct{})
	var mu sync.Mutex
	var seen []string
	start := time.Now()
	go func() {
		defer close(done)
		last := "?"
		for range 100000 { // bounded; stopped long before
			hops, err := r.NextHops(addr)
			if now := strings.Join(hops, ","); err == nil && now != last {
				mu.Lock()
				if last != "?" {
					seen = append(seen, fmt.Sprintf("+%s [%s]", time.Since(start).Round(100*time.Millisecond), now))
				}
				mu.Unlock()
				last = now
			}
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	return func() (int, string) {
		close(stop)
		<-done
		mu.Lock()
		defer mu.Unlock()
		return len(seen), strings.Join(seen, " ")
	}
}
