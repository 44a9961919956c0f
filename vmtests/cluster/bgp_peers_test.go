package cluster

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/merlin-ipvs/merlin/types"
	"github.com/merlin-ipvs/merlin/vmtests/lab"
)

// collectorIP is a second router on the lab's bridge: a bird2 of its own
// (port 1179: the lab's router holds 179) that only collects routes.
const collectorIP = "198.18.0.254"

// TestVMBGPPeersFromCluster: the nodes have no BGP of their own; the
// cluster's settings and peers in etcd, changed through meradm while
// sessions run, make them peer — with the lab's router (every node) and a
// collector (the nodes labelled rack=r1). Adding, changing, moving (a
// node's labels re-read on SIGHUP) and removing the collector moves only
// the collector's sessions: the router's never go down. The collector's
// TCP-MD5 key comes from etcd and appears in no node's log.
func TestVMBGPPeersFromCluster(t *testing.T) {
	confDir := t.TempDir()
	confOf := func(n *lab.Node) string { return filepath.Join(confDir, n.Name+".yaml") }
	writeLabels := func(n *lab.Node, rack string) {
		t.Helper()
		if err := os.WriteFile(confOf(n), []byte("node-labels: rack="+rack+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	c := setUpWith(t, func(n *lab.Node) []string {
		writeLabels(n, map[string]string{"node1": "r1", "node2": "r2"}[n.Name])
		return []string{"-config", confOf(n)}
	})
	node1, node2 := c.Nodes[0], c.Nodes[1]
	c.must(exec.Command("ip", "route", "del", lab.DRVIP+"/32").Run())
	r, err := c.StartRouter()
	c.must(err)
	t.Cleanup(r.Stop)
	collector := c.startCollector()
	vip := lab.DRVIP + ":80"
	c.mustMeradm("service", "add", "dr", "tcp", vip, "-s", "mh", "--forward-method", "route",
		"--health-endpoint", "tcp://:8080", "--health-period", "1s", "--health-timeout", "1s", "--health-up", "1", "--health-down", "1")
	for i := range 3 {
		c.mustMeradm("server", "add", "dr", lab.BackendAddr(i)+":80")
	}

	c.mustMeradm("bgp", "settings", "--local-as", fmt.Sprint(lab.NodeAS), "--router-id-prefix", "198.18.0.0/24")
	c.mustMeradm("bgp", "peer", "add", "router", lab.RouterIP, fmt.Sprint(lab.RouterAS), "--hold-time", "9s", "--connect-retry", "1s")
	c.must(r.WaitNextHops(lab.DRVIP, 90*time.Second, node1.Addr, node2.Addr))
	if out := c.mustMeradm("status"); !strings.Contains(out, "node1: bgp peer 198.18.0.1 (AS 65000, cluster peer router) established") {
		t.Errorf("status does not show the cluster's peer:\n%s", out)
	}
	routerUp := map[string]time.Time{node1.Name: c.upSince(node1, lab.RouterIP), node2.Name: c.upSince(node2, lab.RouterIP)}
	routerUnmoved := func(step string) {
		t.Helper()
		for _, n := range c.Nodes {
			if got := c.upSince(n, lab.RouterIP); !got.Equal(routerUp[n.Name]) || c.metric(n, "merlin_bgp_session_transitions_total") != 0 {
				t.Fatalf("%s: %s's session with the router moved (up since %v, was %v)", step, n.Name, got, routerUp[n.Name])
			}
		}
	}

	key := filepath.Join(confDir, "collector.key")
	c.must(os.WriteFile(key, []byte(collectorKey+"\n"), 0o600))
	c.mustMeradm("bgp", "peer", "add", "collector", collectorIP, fmt.Sprint(lab.RouterAS), "--peer-port", "1179", "--connect-retry", "1s",
		"--node-label", "rack=r1", "--password-from", key)
	c.eventually("the collector to hold node1's route, and only node1's", 60*time.Second, func() error {
		return collector.holdsFrom(node1)
	})
	routerUnmoved("collector added")
	collectorUp := c.upSince(node1, collectorIP)

	c.mustMeradm("bgp", "peer", "edit", "collector", "--hold-time", "6s")
	c.eventually("node1's collector session again, with hold time 6 s", 60*time.Second, func() error {
		if up := c.upSince(node1, collectorIP); !up.After(collectorUp) {
			return fmt.Errorf("up since %v, not after %v", up, collectorUp)
		}
		out, err := collector.Birdc("show", "protocols", "all", node1.Name)
		if err == nil && !strings.Contains(out, "/6\n") {
			err = fmt.Errorf("hold time not 6 s:\n%s", out)
		}
		return err
	})
	routerUnmoved("collector changed")
	collectorUp = c.upSince(node1, collectorIP)

	writeLabels(node2, "r1") // node2 moves to rack r1: SIGHUP re-reads its file
	c.must(node2.Signal(syscall.SIGHUP))
	c.eventually("the collector to hold both nodes' routes", 60*time.Second, func() error { return collector.holdsFrom(node1, node2) })
	routerUnmoved("node2 relabelled")
	if up := c.upSince(node1, collectorIP); !up.Equal(collectorUp) {
		t.Fatalf("node2's new label moved node1's collector session (up since %v, was %v)", up, collectorUp)
	}

	c.mustMeradm("bgp", "peer", "del", "collector")
	c.eventually("the collector to lose every route", 60*time.Second, func() error { return collector.holdsFrom() })
	routerUnmoved("collector removed")
	c.must(r.WaitNextHops(lab.DRVIP, 10*time.Second, node1.Addr, node2.Addr))
	out := c.mustMeradm("bgp", "peer", "list")
	if !strings.Contains(out, "router") || strings.Contains(out, "collector") {
		t.Errorf("peer list after the removal:\n%s", out)
	}
	for _, n := range c.Nodes { // the key came from etcd (the sessions needed it) and went nowhere else
		log, err := os.ReadFile(filepath.Join(c.Root, n.Name+".log"))
		c.must(err)
		if strings.Contains(string(log), collectorKey) {
			t.Errorf("%s's log holds the collector's TCP-MD5 key", n.Name)
		}
	}
}

// collectorKey is the TCP-MD5 key of the collector's sessions.
const collectorKey = "c0llector-md5-key"

// upSince is when the node's session with peer came up (zero: not up).
func (c *cluster) upSince(n *lab.Node, peer string) time.Time {
	c.t.Helper()
	raw := c.mustMeradm("status", "-o", "json")
	var st types.StatusResponse
	c.must(protojson.Unmarshal([]byte(raw), &st))
	for _, ns := range st.GetNodes() {
		if ns.GetNode() != n.Name {
			continue
		}
		for _, p := range ns.GetBgpPeers() {
			if p.GetAddress() == peer && p.GetState() == "established" {
				return p.GetUpSince().AsTime()
			}
		}
	}
	return time.Time{}
}

// collectorRouter is bird2 at collectorIP:1179, peering with every node.
type collectorRouter struct {
	*lab.Router
	c *cluster
}

func (c *cluster) startCollector() *collectorRouter {
	c.t.Helper()
	c.must(exec.Command("ip", "addr", "add", collectorIP+"/24", "dev", "br0").Run())
	c.t.Cleanup(func() { _ = exec.Command("ip", "addr", "del", collectorIP+"/24", "dev", "br0").Run() })
	var b strings.Builder
	fmt.Fprintf(&b, "router id %s;\nprotocol device {}\n", collectorIP)
	for _, n := range c.Nodes {
		fmt.Fprintf(&b, `protocol bgp %s {
	local %s port 1179 as %d;
	neighbor %s as %d;
	passive on;
	hold time 9;
	error wait time 1, 2;
	password "%s";
	ipv4 { import all; export none; };
}
`, n.Name, collectorIP, lab.RouterAS, n.Addr, lab.NodeAS, collectorKey)
	}
	r, err := c.StartBird("collector", b.String())
	c.must(err)
	c.t.Cleanup(r.Stop)
	return &collectorRouter{Router: r, c: c}
}

// holdsFrom: the collector holds the VIP's route from exactly these nodes.
func (cr *collectorRouter) holdsFrom(nodes ...*lab.Node) error {
	want := map[string]bool{}
	for _, n := range nodes {
		want[n.Name] = true
	}
	for _, n := range cr.c.Nodes {
		out, err := cr.Birdc("show", "route", "for", lab.DRVIP, "protocol", n.Name)
		if err != nil && !strings.Contains(out, "Network not found") { // birdc's exit status 1: no route from anyone
			return err
		}
		if has := strings.Contains(out, lab.DRVIP); has != want[n.Name] {
			return fmt.Errorf("%s's route held: %v, want %v:\n%s", n.Name, has, want[n.Name], out)
		}
	}
	return nil
}
