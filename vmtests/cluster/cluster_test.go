// Package cluster tests a merlin cluster on a real kernel: inside the test
// VM, the lab (vmtests/lab) of an etcd, two merlin nodes, three backends and
// a client. It needs root and a kernel with IPVS; on the host it skips.
package cluster

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	"github.com/merlin-ipvs/merlin/internal/netns"
	"github.com/merlin-ipvs/merlin/types"
	"github.com/merlin-ipvs/merlin/vmtests/lab"
)

const (
	foreignSv = "198.18.50.50:80"
	resync    = 3 * time.Second
)

// binDir holds merlin and meradm, built on the host by `make build`.
func binDir(t *testing.T) string {
	dir := os.Getenv("MERLIN_BIN")
	if dir == "" {
		wd, _ := os.Getwd()
		dir = filepath.Join(wd, "..", "..", "bin")
	}
	for _, b := range []string{"merlin", "meradm"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			t.Fatalf("%s/%s missing: run `make build` first (or set MERLIN_BIN): %v", dir, b, err)
		}
	}
	return dir
}

// cluster wraps the lab for a test: every failure fails the test.
type cluster struct {
	t *testing.T
	*lab.Lab
	kv *clientv3.Client
}

// in is c for subtest t: its helpers fail t, not the parent test (whose
// Fatal would end the subtest's goroutine but leave it marked passed).
func (c *cluster) in(t *testing.T) *cluster {
	sub := *c
	sub.t = t
	return &sub
}

func setUp(t *testing.T) *cluster { return setUpWith(t, nil) }

// setUpWith is setUp with per-node merlin flags.
func setUpWith(t *testing.T, nodeArg func(*lab.Node) []string) *cluster {
	return setUpLab(t, lab.Config{NodeArg: nodeArg})
}

func (c *cluster) must(err error) {
	c.t.Helper()
	if err != nil {
		c.t.Fatal(err)
	}
}

func (c *cluster) eventually(what string, timeout time.Duration, fn func() error) {
	c.t.Helper()
	if err := lab.Eventually(timeout, fn); err != nil {
		c.t.Fatalf("%s: %v", what, err)
	}
}

func (c *cluster) meradm(args ...string) (string, error) { return c.Meradm(args...) }

func (c *cluster) mustMeradm(args ...string) string {
	c.t.Helper()
	out, err := c.Meradm(args...)
	c.must(err)
	return out
}

func (c *cluster) table(n *lab.Node) string {
	c.t.Helper()
	out, err := c.Table(n, foreignSv)
	c.must(err)
	return out
}

func (c *cluster) waitTables(what string, want string) {
	c.t.Helper()
	for _, n := range c.Nodes {
		c.eventually(fmt.Sprintf("%s on %s", what, n.Name), 60*time.Second, func() error {
			if got := c.table(n); got != want {
				return fmt.Errorf("table:\n%s\nwant:\n%s", got, want)
			}
			return nil
		})
	}
}

// waitServersUp waits until every node's kernel table has k servers of
// the service at vip with weight 1: every node sees them all healthy, so
// consistent hashing (mh) maps a flow to the same server on each.
func (c *cluster) waitServersUp(vip string, k int) {
	c.t.Helper()
	for _, n := range c.Nodes {
		c.eventually(fmt.Sprintf("%d servers of %s up on %s", k, vip, n.Name), 60*time.Second, func() error {
			up := 0
			for _, line := range strings.Split(c.table(n), "\n") {
				if strings.HasPrefix(line, "-a -t "+vip+" ") && strings.HasSuffix(line, " -w 1") {
					up++
				}
			}
			if up != k {
				return fmt.Errorf("%d servers with weight 1:\n%s", up, c.table(n))
			}
			return nil
		})
	}
}

func (c *cluster) connect(addr string) (net.Conn, string, error) { return c.Connect(addr) }

func (c *cluster) tally(addr string, n int) map[string]int {
	c.t.Helper()
	got, err := c.Tally(addr, n)
	c.must(err)
	return got
}

func (c *cluster) startEtcd()                               { c.t.Helper(); c.must(c.StartEtcd()) }
func (c *cluster) stopEtcd()                                { c.StopEtcd() }
func (c *cluster) stopNode(n *lab.Node, sig syscall.Signal) { c.StopNode(n, sig) }
func (c *cluster) startNode(n *lab.Node)                    { c.t.Helper(); c.must(c.StartNode(n)) }
func (c *cluster) waitReady(n *lab.Node)                    { c.t.Helper(); c.must(c.WaitReady(n)) }

func (c *cluster) startTraffic(addr string) *lab.Traffic { return c.StartTraffic(addr) }

// opsWritten sums merlin_ipvs_ops_total of a node.
func (c *cluster) opsWritten(n *lab.Node) int {
	c.t.Helper()
	return int(c.metric(n, "merlin_ipvs_ops_total"))
}

// metric sums every series of a metric on a node's /metrics.
func (c *cluster) metric(n *lab.Node, name string) float64 {
	c.t.Helper()
	v, err := lab.Metric(n, name)
	c.must(err)
	return v
}

// waitResyncs waits until every node has compared the whole kernel table
// with its model at least k more times (merlin_resyncs_total), while check
// (if not nil) holds at every look.
func (c *cluster) waitResyncs(k int, check func()) {
	c.t.Helper()
	start := make([]float64, len(c.Nodes))
	for i, n := range c.Nodes {
		start[i] = c.metric(n, "merlin_resyncs_total")
	}
	for i, n := range c.Nodes {
		c.eventually(fmt.Sprintf("%d resyncs on %s", k, n.Name), 20*resync+30*time.Second, func() error {
			if check != nil {
				check()
			}
			if got := c.metric(n, "merlin_resyncs_total") - start[i]; got < float64(k) {
				return fmt.Errorf("%v resyncs so far", got)
			}
			return nil
		})
	}
}

func TestVMCluster(t *testing.T) {
	c := setUp(t)
	ctx := context.Background()
	// An empty prefix is a new cluster, or the original's etcd2 state not
	// migrated: the node's log says which to check.
	if log := c.Log("node1", 200); !strings.Contains(log, "no services under the prefix") {
		t.Errorf("node1 started on an empty prefix without a word:\n%s", log)
	}

	// A service someone made by hand on node1: merlin must never touch it.
	nsRun(t, c.Nodes[0].NS, "ipvsadm", "-A", "-t", foreignSv, "-s", "rr")

	c.mustMeradm("service", "add", "nat", "tcp", lab.NATVIP+":80", "-s", "rr")
	c.mustMeradm("service", "add", "dr", "tcp", lab.DRVIP+":80", "-s", "rr")
	for i := range 3 {
		c.mustMeradm("server", "add", "nat", fmt.Sprintf("198.18.0.%d:8080", 21+i), "-f", "masq")
		c.mustMeradm("server", "add", "dr", fmt.Sprintf("198.18.0.%d:80", 21+i), "-f", "route")
	}
	want := strings.Join([]string{
		"-A -t 198.19.0.10:80 -s rr",
		"-A -t 198.19.0.20:80 -s rr",
		"-a -t 198.19.0.10:80 -r 198.18.0.21:8080 -m -w 1",
		"-a -t 198.19.0.10:80 -r 198.18.0.22:8080 -m -w 1",
		"-a -t 198.19.0.10:80 -r 198.18.0.23:8080 -m -w 1",
		"-a -t 198.19.0.20:80 -r 198.18.0.21:80 -g -w 1",
		"-a -t 198.19.0.20:80 -r 198.18.0.22:80 -g -w 1",
		"-a -t 198.19.0.20:80 -r 198.18.0.23:80 -g -w 1",
	}, "\n")
	want = sortedLines(want)
	c.waitTables("services created with meradm", want)
	for _, n := range c.Nodes {
		if out := nsRun(t, n.NS, "ip", "addr", "show", "dev", "merlin0"); !strings.Contains(out, lab.NATVIP+"/32") || !strings.Contains(out, lab.DRVIP+"/32") {
			t.Fatalf("VIPs not on %s's merlin0:\n%s", n.Name, out)
		}
	}

	t.Run("traffic NAT and DR", func(t *testing.T) {
		for _, vip := range []string{lab.NATVIP, lab.DRVIP} {
			got := c.tally(vip+":80", 12)
			if len(got) != 3 {
				t.Fatalf("connections to %s reached %v, want all three backends", vip, got)
			}
			t.Logf("%s: %v", vip, got)
		}
	})

	t.Run("weight 0 drains", func(t *testing.T) {
		held, name, err := c.connect(lab.NATVIP + ":80")
		if err != nil {
			t.Fatal(err)
		}
		defer held.Close()
		ip := map[string]string{"backend1": "198.18.0.21", "backend2": "198.18.0.22", "backend3": "198.18.0.23"}[name]
		c.mustMeradm("server", "edit", "nat", ip+":8080", "-w", "0")
		c.waitTables("weight 0", sortedLines(strings.Replace(want, "-r "+ip+":8080 -m -w 1", "-r "+ip+":8080 -m -w 0", 1)))
		if got := c.tally(lab.NATVIP+":80", 12); got[name] != 0 {
			t.Fatalf("drained %s still got new connections: %v", name, got)
		}
		// The existing connection still works.
		_ = held.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintln(held, "still there")
		if line, err := bufio.NewReader(held).ReadString('\n'); err != nil || line != "still there\n" {
			t.Fatalf("held connection to drained %s: %q %v", name, line, err)
		}
		c.mustMeradm("server", "edit", "nat", ip+":8080", "-w", "1")
		c.waitTables("weight restored", want)
	})

	t.Run("etcd down keeps the dataplane", func(t *testing.T) {
		tr := c.startTraffic(lab.NATVIP + ":80")
		before := []string{c.table(c.Nodes[0]), c.table(c.Nodes[1])}
		c.stopEtcd()
		c.waitResyncs(2, func() { // the background resyncs run without etcd
			for i, n := range c.Nodes {
				if got := c.table(n); got != before[i] {
					t.Fatalf("%s's table changed while etcd was down:\n%s", n.Name, got)
				}
			}
		})
		c.startEtcd()
		c.mustMeradm("server", "edit", "nat", "198.18.0.21:8080", "-w", "3")
		c.waitTables("change after etcd returned", sortedLines(strings.Replace(want, "-r 198.18.0.21:8080 -m -w 1", "-r 198.18.0.21:8080 -m -w 3", 1)))
		ok, fail, lastErr := tr.Finish()
		if fail != 0 || ok == 0 {
			t.Fatalf("client connections during the etcd outage: %d ok, %d failed (%v)", ok, fail, lastErr)
		}
		t.Logf("client connections during the etcd outage: %d ok, 0 failed", ok)
		c.mustMeradm("server", "edit", "nat", "198.18.0.21:8080", "-w", "1")
		c.waitTables("weight back", want)
	})

	t.Run("restart writes nothing", func(t *testing.T) {
		tr := c.startTraffic(lab.NATVIP + ":80")
		n := c.Nodes[0]
		c.stopNode(n, syscall.SIGKILL)
		c.startNode(n)
		c.waitReady(n)
		c.waitResyncs(1, nil) // through a full resync too
		if w := c.opsWritten(n); w != 0 {
			t.Fatalf("restarted merlin wrote %d IPVS ops with nothing changed", w)
		}
		if got := c.table(n); got != want {
			t.Fatalf("table after restart:\n%s", got)
		}
		// SIGTERM leaves the dataplane in place too.
		c.stopNode(n, syscall.SIGTERM)
		if got := c.table(n); got != want {
			t.Fatalf("table after SIGTERM:\n%s", got)
		}
		c.startNode(n)
		c.waitReady(n)
		if ok, fail, lastErr := tr.Finish(); fail != 0 {
			t.Fatalf("client connections during restarts: %d ok, %d failed (%v)", ok, fail, lastErr)
		}
	})

	t.Run("changes behind merlin's back are repaired", func(t *testing.T) {
		nsRun(t, c.Nodes[1].NS, "ipvsadm", "-D", "-t", lab.DRVIP+":80")
		nsRun(t, c.Nodes[0].NS, "ipvsadm", "-e", "-t", lab.NATVIP+":80", "-r", "198.18.0.22:8080", "-m", "-w", "9")
		start := time.Now()
		c.waitTables("repair", want)
		t.Logf("repaired within %s (resync period %s)", time.Since(start).Round(100*time.Millisecond), resync)
	})

	t.Run("one bad object does not block the others", func(t *testing.T) {
		// Written straight into etcd: "twos" is a valid scheduler name, but
		// Debian's 6.1 kernel has no ip_vs_twos module, so the kernel refuses it.
		twos, err := proto.Marshal(&types.VirtualService{Id: "twos", Key: &types.VirtualService_Key{Ip: "198.19.0.30", Port: 80, Protocol: types.Protocol_TCP},
			Config: &types.VirtualService_Config{Scheduler: "twos"}})
		c.must(err)
		_, err = c.kv.Put(ctx, "/merlin/services/twos", string(twos))
		c.must(err)
		_, err = c.kv.Put(ctx, "/merlin/services/garbage", "\x00\xffnot protobuf")
		c.must(err)
		c.mustMeradm("service", "add", "after", "tcp", "198.19.0.40:80", "-s", "wlc")
		withAfter := sortedLines(want + "\n-A -t 198.19.0.40:80 -s wlc")
		c.waitTables("the good service applied", withAfter)
		c.eventually("the bad one reported", 60*time.Second, func() error {
			out, _ := c.meradm("status")
			for _, n := range c.Nodes {
				if !strings.Contains(out, n.Name+": service twos:") {
					return fmt.Errorf("status:\n%s", out)
				}
			}
			return nil
		})
		out := c.mustMeradm("list")
		if !strings.Contains(out, "invalid key /merlin/services/garbage") {
			t.Fatalf("garbage value not reported:\n%s", out)
		}
		t.Logf("meradm status:\n%s", c.mustMeradm("status"))
		c.mustMeradm("service", "del", "twos")
		c.mustMeradm("service", "del", "after")
		_, err = c.kv.Delete(ctx, "/merlin/services/garbage")
		c.must(err)
		c.waitTables("cleaned up", want)
	})

	t.Run("a wiped prefix is held back", func(t *testing.T) {
		saved, err := c.kv.Get(ctx, "/merlin/", clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.kv.Delete(ctx, "/merlin/s", clientv3.WithPrefix()); err != nil { // services/ and servers/
			t.Fatal(err)
		}
		c.eventually("guard reported", 60*time.Second, func() error {
			out, _ := c.meradm("status")
			if strings.Count(out, "deletion guard holds back deleting 2 of 2 services") != 2 {
				return fmt.Errorf("status:\n%s", out)
			}
			return nil
		})
		c.waitResyncs(1, func() {
			for _, n := range c.Nodes {
				if got := c.table(n); got != want {
					t.Fatalf("%s deleted services of a wiped prefix:\n%s", n.Name, got)
				}
			}
		})
		for _, kv := range saved.Kvs {
			if strings.Contains(string(kv.Key), "/nodes/") {
				continue
			}
			if _, err := c.kv.Put(ctx, string(kv.Key), string(kv.Value)); err != nil {
				t.Fatal(err)
			}
		}
		c.eventually("guard released", 60*time.Second, func() error {
			out, _ := c.meradm("status")
			if strings.Contains(out, "held") {
				return fmt.Errorf("status:\n%s", out)
			}
			return nil
		})
		c.waitTables("nothing lost", want)
	})

	t.Run("stats from every node", func(t *testing.T) {
		out := c.mustMeradm("list", "--stats")
		for _, n := range c.Nodes {
			if !strings.Contains(out, "node "+n.Name) {
				t.Fatalf("list --stats lacks %s:\n%s", n.Name, out)
			}
		}
		if !strings.Contains(out, "[nat]") {
			t.Fatalf("list --stats:\n%s", out)
		}
	})

	// Through all of it, the hand-made service stayed.
	if out := nsRun(t, c.Nodes[0].NS, "ipvsadm", "-Sn"); !strings.Contains(out, foreignSv) {
		t.Fatalf("the foreign service was touched:\n%s", out)
	}
}

func sortedLines(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func nsRun(t *testing.T, ns *netns.NS, name string, args ...string) string {
	t.Helper()
	out, err := ns.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s in %s: %v\n%s", name, strings.Join(args, " "), ns.Name, err, out)
	}
	return string(out)
}
