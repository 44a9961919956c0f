package cluster

import (
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/merlin-ipvs/merlin/internal/testenv"
	"github.com/merlin-ipvs/merlin/vmtests/lab"
)

// Flows of the scale test (MERLIN_SYNC_FLOWS_TCP, MERLIN_SYNC_FLOWS_UDP
// change them for a longer run): each is split between a direct-routing
// and an IPIP-tunnel service; a tenth more TCP flows begin while a node is
// away.
var (
	scaleTCP = envInt("MERLIN_SYNC_FLOWS_TCP", 1000)
	scaleUDP = envInt("MERLIN_SYNC_FLOWS_UDP", 200)
)

// scaleInterval paces each flow's messages: 600 a second in all, which
// the one emulated CPU of the test VM carries beside two nodes, etcd and
// the changes (at one a second, its clients and backends lagged: most
// flows waited over 3 s for an echo while meradm ran).
const scaleInterval = 2 * time.Second

func envInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return n
	}
	return def
}

// TestVMConnSyncScale: two directors behind the router (bird2, ECMP on
// ports, BFD), ten backends, direct-routing and IPIP-tunnel services over
// TCP and UDP, and long-lived flows through the router. In one run node1
// dies (its link cut and merlin SIGKILLed), a tenth of the backends change
// while it is away (one added, one re-weighted, one taken out by its
// health check), new flows begin through node2, and node1 comes back and
// the router rehashes flows to it. With connection sync, no flow whose
// real server stayed is reset or stalls, with wlc and with mh; without it,
// wlc resets flows.
func TestVMConnSyncScale(t *testing.T) {
	for _, run := range []struct {
		sched string
		sync  bool
	}{{"wlc", false}, {"wlc", true}, {"mh", true}} {
		name := run.sched + map[bool]string{true: " with sync", false: " without sync"}[run.sync]
		t.Run(name, func(t *testing.T) { testSyncScale(t, run.sched, run.sync) })
	}
}

const scaleBackends = 10 // in the services at first; one more is added

func testSyncScale(t *testing.T, sched string, sync bool) {
	c := setUpLab(t, lab.Config{Backends: scaleBackends + 1, NodeArg: func(n *lab.Node) []string {
		args := lab.BGPArgs(n, "bfd")
		if sync {
			args = append(args, syncArgs...)
		}
		return args
	}})
	node1, node2 := c.Nodes[0], c.Nodes[1]
	r := c.startScaleRouter()
	c.logRouteChanges()
	services := c.addScaleServices(node2, sched)
	for _, vip := range []string{lab.DRVIP, lab.TunVIP} {
		c.must(r.WaitNextHops(vip, 90*time.Second, node1.Addr, node2.Addr))
	}
	fs := newFlows(scaleInterval)
	defer fs.finish()
	start := time.Now()
	t.Logf("flows begin at %s", start.Format("15:04:05.000"))
	phase := func(what string) { t.Logf("+%s: %s", time.Since(start).Round(100*time.Millisecond), what) }
	c.openScaleFlows(fs, scaleTCP, scaleUDP)
	c.waitCarrying(fs, node1, node2)
	phase(fmt.Sprintf("%d flows open, carried by both nodes", len(fs.all)))

	// (a) node1 dies: its link is cut and merlin killed.
	c.must(exec.Command("ip", "link", "set", node1.Link, "down").Run())
	c.stopNode(node1, syscall.SIGKILL)
	for _, vip := range []string{lab.DRVIP, lab.TunVIP} {
		c.must(r.WaitNextHops(vip, 60*time.Second, node2.Addr))
	}
	phase("node1 out of the router's routes")
	// (b) a tenth of the backends change while node1 is away.
	gone := c.churnBackends(node2, services)
	phase("backends changed")
	c.openScaleFlows(fs, scaleTCP/10, 0)
	c.waitRounds(fs, 2)
	phase("new flows through node2")
	// (c) node1 comes back; the router rehashes flows to it.
	c.must(exec.Command("ip", "link", "set", node1.Link, "up").Run())
	c.startNode(node1)
	for _, vip := range []string{lab.DRVIP, lab.TunVIP} {
		c.must(r.WaitNextHops(vip, 120*time.Second, node1.Addr, node2.Addr))
	}
	phase("node1 back in the router's routes")
	c.waitCarrying(fs, node1)
	c.waitRounds(fs, 3)
	phase("flows carried by node1 again")
	if sync {
		if n := c.metric(node1, "merlin_ipvs_sync_rejoins_total"); n < 1 {
			t.Errorf("node1 did not warm up again after its link came back (merlin_ipvs_sync_rejoins_total %v)", n)
		}
	}
	failed, total, some := fs.failures(start, gone)
	paused, longest := fs.pausesSoFar()
	t.Logf("%s, sync %v: %d of %d flows whose real server stayed failed; e.g. %q", sched, sync, failed, total, some)
	t.Logf("%d flows paused over %s at least once (packets lost while the router rerouted and retransmitted, or the VM lagging); the longest exchange took %s",
		paused, slowAfter, longest.Round(100*time.Millisecond))
	if sync && failed != 0 {
		for _, n := range c.Nodes {
			t.Logf("%s's connections:\n%s", n.Name, nsRun(t, n.NS, "ipvsadm", "-Lnc"))
		}
	}
	switch {
	case sync && failed != 0:
		t.Errorf("with connection sync, %d of %d flows were reset or stalled, want none: %q", failed, total, some)
	case !sync && failed == 0:
		t.Errorf("without connection sync no wlc flow failed: the test shows nothing")
	}
}

// setUpLab builds the lab cfg asks for (nodes reconcile every resync, the
// deletion guard at 1) and removes it when the test ends, logging its
// logs if the test failed.
func setUpLab(t *testing.T, cfg lab.Config) *cluster {
	if !testenv.InVM() {
		testenv.Missing(t, false, "the cluster test needs the VM kernel (IPVS); run it through make vmtest")
	}
	testenv.RequireRoot(t)
	// Both ends of every flow live in this process (the backends too).
	nofile := syscall.Rlimit{Cur: 1 << 16, Max: 1 << 16}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &nofile); err != nil {
		t.Fatalf("raise the open files limit: %v", err)
	}
	cfg.Bin = binDir(t)
	cfg.MerlinArg = append(cfg.MerlinArg, "-reconcile-sync-period", resync.String(), "-deletion-guard-min", "1")
	l, err := lab.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{t: t, Lab: l}
	t.Cleanup(func() {
		if t.Failed() {
			for _, name := range []string{"etcd", "node1", "node2", "bird", "frr", "collector"} {
				t.Logf("%s log (tail):\n%s", name, l.Log(name, 60))
			}
		}
		l.Close()
		l.RemoveScratch()
	})
	kv, err := clientv3.New(clientv3.Config{Endpoints: []string{lab.EtcdURL}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { kv.Close() })
	c.kv = kv
	return c
}

// logRouteChanges records the router's route changes (ip monitor) from now
// on and logs them if the test fails: a change of a VIP's next hops the
// test did not make (BFD or a health check flapping in a lagging VM) moves
// flows between the nodes.
func (c *cluster) logRouteChanges() {
	var out testenv.Buffer
	monitor := exec.Command("ip", "-timestamp", "monitor", "route")
	monitor.Stdout = &out
	if err := monitor.Start(); err != nil {
		c.t.Logf("route changes will not be logged: %v", err)
		return
	}
	c.t.Cleanup(func() {
		_ = monitor.Process.Kill()
		_ = monitor.Wait()
		if c.t.Failed() {
			lines := strings.Split(out.String(), "\n")
			c.t.Logf("the router's route changes (the last 300 lines):\n%s", strings.Join(lines[max(len(lines)-300, 0):], "\n"))
		}
	})
}

// startScaleRouter: the lab's static DR route out, bird2 with BFD in.
func (c *cluster) startScaleRouter() *lab.Router {
	c.must(exec.Command("ip", "route", "del", lab.DRVIP+"/32").Run())
	c.RouterBFD = true
	r, err := c.StartRouter()
	c.must(err)
	c.t.Cleanup(r.Stop)
	return r
}

// addScaleServices: TCP and UDP services on the DR VIP and on the tunnel
// VIP, each with the first ten backends, checked on :8080 every second.
func (c *cluster) addScaleServices(via *lab.Node, sched string) map[string]string {
	flags := []string{"-s", sched}
	if sched == "mh" {
		flags = append(flags, "-b", "mh-fallback,mh-port")
	}
	check := []string{"--health-endpoint", "tcp://:8080", "--health-period", "1s", "--health-timeout", "1s", "--health-up", "1", "--health-down", "1"}
	services := map[string]string{ // name → forwarding method
		"dr-tcp": "route", "dr-udp": "route", "tun-tcp": "tunnel", "tun-udp": "tunnel",
	}
	for i := range c.Backends {
		c.must(c.EnableTunnel(i))
		c.must(c.ServeTCP(i, lab.TunVIP+":80"))
		c.must(c.ServeUDP(i, lab.DRVIP+":53"))
		c.must(c.ServeUDP(i, lab.TunVIP+":53"))
	}
	for name, fwd := range services {
		addr := map[bool]string{true: lab.DRVIP, false: lab.TunVIP}[strings.HasPrefix(name, "dr")]
		proto, port := "tcp", "80"
		if strings.HasSuffix(name, "udp") {
			proto, port = "udp", "53"
		}
		c.mustMeradmVia(via, append(append([]string{"service", "add", name, proto, addr + ":" + port}, flags...), check...)...)
		for i := range scaleBackends {
			c.mustMeradmVia(via, "server", "add", name, lab.BackendAddr(i)+":"+port, "-f", fwd)
		}
	}
	for _, vip := range []string{lab.DRVIP + ":80", lab.TunVIP + ":80", lab.DRVIP + ":53", lab.TunVIP + ":53"} {
		c.waitServersUpProto(vip, scaleBackends)
	}
	return services
}

func (c *cluster) mustMeradmVia(n *lab.Node, args ...string) string {
	c.t.Helper()
	out, err := c.MeradmVia(n, args...)
	c.must(err)
	return out
}

// waitServersUpProto waits for k servers of vip (TCP or UDP) with weight 1
// on every running node.
func (c *cluster) waitServersUpProto(vip string, k int) {
	c.t.Helper()
	for _, n := range c.Nodes {
		c.eventually(fmt.Sprintf("%d servers of %s up on %s", k, vip, n.Name), 60*time.Second, func() error {
			if up := c.countServers(n, vip, "1"); up != k {
				return fmt.Errorf("%d servers with weight 1:\n%s", up, c.table(n))
			}
			return nil
		})
	}
}

// countServers counts vip's servers in n's table with the weight.
func (c *cluster) countServers(n *lab.Node, vip, weight string) int {
	k := 0
	for _, line := range strings.Split(c.table(n), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 || f[0] != "-a" || f[2] != vip {
			continue
		}
		if i := slices.Index(f, "-w"); i > 0 && i+1 < len(f) && f[i+1] == weight {
			k++
		}
	}
	return k
}

// openScaleFlows opens tcp and udp flows, half through each VIP.
func (c *cluster) openScaleFlows(fs *flows, tcp, udp int) {
	c.t.Helper()
	fs.openTCP(c, "dr-tcp", lab.DRVIP+":80", tcp/2)
	fs.openTCP(c, "tun-tcp", lab.TunVIP+":80", tcp-tcp/2)
	fs.openUDP(c, "dr-udp", lab.DRVIP+":53", udp/2)
	fs.openUDP(c, "tun-udp", lab.TunVIP+":53", udp-udp/2)
}

// waitCarrying waits until each node forwards the flows' packets (its
// kernel's service counters rise).
func (c *cluster) waitCarrying(fs *flows, nodes ...*lab.Node) {
	c.t.Helper()
	for _, n := range nodes {
		before := c.metric(n, "merlin_ipvs_service_incoming_packets_total")
		c.eventually(n.Name+" to carry flows", 60*time.Second, func() error {
			if got := c.metric(n, "merlin_ipvs_service_incoming_packets_total") - before; got < 100 {
				return fmt.Errorf("%v packets forwarded", got)
			}
			return nil
		})
	}
}

// waitRounds waits until every flow still working has exchanged k more
// messages.
func (c *cluster) waitRounds(fs *flows, k int) {
	c.t.Helper()
	fs.mu.Lock()
	mark := make(map[*flow]int, len(fs.all))
	for _, f := range fs.all {
		mark[f] = f.rounds
	}
	fs.mu.Unlock()
	c.eventually(fmt.Sprintf("every flow to exchange %d more messages", k), 3*time.Minute, func() error {
		fs.mu.Lock()
		defer fs.mu.Unlock()
		behind := 0
		for f, r := range mark {
			if f.failure == "" && f.rounds < r+k {
				behind++
			}
		}
		if behind > 0 {
			return fmt.Errorf("%d flows behind", behind)
		}
		return nil
	})
}

// churnBackends changes a tenth of the backends through node via: the
// spare one added to every service, one re-weighted, one taken out by its
// health check (its check port closed; its flows may end). It returns the
// name of the one taken out.
func (c *cluster) churnBackends(via *lab.Node, services map[string]string) string {
	c.t.Helper()
	added, reweighted, out := scaleBackends, 1, 2
	for name, fwd := range services {
		port := map[bool]string{true: "53", false: "80"}[strings.HasSuffix(name, "udp")]
		c.mustMeradmVia(via, "server", "add", name, lab.BackendAddr(added)+":"+port, "-f", fwd)
		c.mustMeradmVia(via, "server", "edit", name, lab.BackendAddr(reweighted)+":"+port, "-w", "3")
	}
	c.StopBackend(out)
	c.eventually("node2's table to follow the changes", 60*time.Second, func() error {
		for _, vip := range []string{lab.DRVIP + ":80", lab.TunVIP + ":80", lab.DRVIP + ":53", lab.TunVIP + ":53"} {
			if up, heavy, down := c.countServers(via, vip, "1"), c.countServers(via, vip, "3"), c.countServers(via, vip, "0"); up != scaleBackends-1 || heavy != 1 || down != 1 {
				return fmt.Errorf("%s: %d at weight 1, %d at 3, %d at 0:\n%s", vip, up, heavy, down, c.table(via))
			}
		}
		return nil
	})
	return fmt.Sprintf("backend%d", out+1)
}
