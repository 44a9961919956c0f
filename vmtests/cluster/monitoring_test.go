package cluster

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/merlin-ipvs/merlin/deploy"
	"github.com/merlin-ipvs/merlin/vmtests/lab"
)

// TestVMMonitoring checks what ships for operators against a running
// cluster: every metric the Grafana dashboard and the alert rules read is
// one the nodes export, and Debian's Prometheus, scraping both nodes and
// running the rules, answers the dashboard's per-backend query with the
// traffic the test sent (the kernel's own IPVS counters as the oracle).
func TestVMMonitoring(t *testing.T) {
	// The default per-backend families (what ships reads no other, a host
	// test checks) and the kernel's packets per backend as the oracle.
	c := setUpWith(t, func(n *lab.Node) []string {
		args := append(countersArgs(n), "-metrics-backend-families", "default,merlin_ipvs_backend_incoming_packets_total")
		return append(args, lab.BGPArgs(n, "bfd")...)
	})
	c.RouterBFD = true
	r, err := c.StartRouter()
	c.must(err)
	t.Cleanup(r.Stop)
	prom, err := c.StartPrometheus("../../deploy/prometheus/merlin-rules.yml")
	c.must(err)
	t.Cleanup(prom.Stop)
	// Checks and passive health, so that every kind of series exists.
	c.mustMeradm("service", "add", "nat", "tcp", lab.NATVIP+":80", "-s", "rr", "--passive-health",
		"--health-endpoint", "tcp://:8080", "--health-period", "1s", "--health-timeout", "1s", "--health-up", "1", "--health-down", "2")
	for i := range 3 {
		c.mustMeradm("server", "add", "nat", lab.BackendAddr(i)+":8080", "-f", "masq")
	}
	c.waitCounterKeys(7) // 1 VIP, 3 servers forwarded to, 3 replying
	for _, n := range c.Nodes {
		c.eventually("BGP and BFD up on "+n.Name, 60*time.Second, func() error {
			if up := c.metric(n, "merlin_bgp_session_up"); up != 1 {
				return fmt.Errorf("merlin_bgp_session_up %v", up)
			}
			if up := c.metric(n, "merlin_bfd_session_up"); up != 1 {
				return fmt.Errorf("merlin_bfd_session_up %v", up)
			}
			return nil
		})
	}
	const conns = 40
	c.tally(lab.NATVIP+":80", conns)

	exported := map[string]bool{}
	for _, n := range c.Nodes {
		fams, err := lab.Families(n)
		c.must(err)
		for f := range fams {
			exported[f] = true
		}
	}
	dash, err := deploy.Dashboard()
	c.must(err)
	alerts, err := deploy.Alerts()
	c.must(err)
	for _, q := range append(dash, alerts...) {
		for _, name := range deploy.MetricNames(q.Expr) {
			if !exported[name] {
				t.Errorf("%s reads %s, which no node exports", q.Where, name)
			}
		}
	}

	c.eventually("Prometheus scrapes both nodes", 60*time.Second, func() error {
		up, err := prom.Query(`up{job="merlin"} == 1`)
		if err != nil || len(up) != 2 {
			return fmt.Errorf("up: %v %v", up, err)
		}
		return nil
	})
	total, err := deploy.PanelQuery("Forwarded packets per backend (total)")
	c.must(err)
	c.eventually("the dashboard's per-backend query returns the traffic sent", 60*time.Second, func() error {
		got, err := prom.Query(total)
		if err != nil {
			return err
		}
		want := map[string]float64{}
		for _, n := range c.Nodes {
			for labels, v := range c.series(n, "merlin_ipvs_backend_incoming_packets_total") {
				want[labels] += v
			}
		}
		if len(want) != 3 {
			return fmt.Errorf("kernel counters %v", want)
		}
		sum := 0.0
		for labels, v := range want {
			if got[labels] != v {
				return fmt.Errorf("%s: Prometheus %v, the kernel's IPVS %v (all: %v)", labels, got[labels], v, got)
			}
			sum += v
		}
		if sum < 5*conns { // a connection is at least SYN, ACK, data ACK, FIN, ACK
			return fmt.Errorf("%v packets for %d connections", sum, conns)
		}
		return nil
	})
	rate, err := deploy.PanelQuery("Forwarded packets / s per backend")
	c.must(err)
	c.tally(lab.NATVIP+":80", conns)
	c.eventually("the per-backend rate shows each backend", 30*time.Second, func() error {
		got, err := prom.Query(rate)
		if err != nil {
			return err
		}
		busy := 0
		for labels, v := range got {
			if strings.Contains(labels, "service=nat") && v > 0 {
				busy++
			}
		}
		if busy != 3 {
			return fmt.Errorf("rates %v", got)
		}
		return nil
	})
	c.eventually("every alert rule evaluates", 30*time.Second, prom.RulesHealthy)
	firing, err := prom.Query(`ALERTS{alertstate="firing"}`)
	c.must(err)
	if len(firing) != 0 {
		t.Errorf("alerts firing on a healthy cluster: %v", firing)
	}
}
