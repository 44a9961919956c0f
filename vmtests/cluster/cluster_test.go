// Package cluster runs a merlin cluster on a real kernel: inside the test
// VM, an etcd (Debian's binary), two merlin nodes in their own network
// namespaces, three backends and a client, connected by veth and a bridge.
// It needs root and a kernel with IPVS; on the host it skips.
package cluster

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/merlin-ipvs/merlin/internal/netns"
	"github.com/merlin-ipvs/merlin/internal/testenv"
)

const (
	etcdURL   = "http://198.18.0.1:2379"
	natVIP    = "198.19.0.10"
	drVIP     = "198.19.0.20"
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

type node struct {
	name    string
	ns      *netns.NS
	addr    string
	dataDir string
	cmd     *exec.Cmd
	exited  chan struct{}
	log     *os.File
}

type cluster struct {
	t        *testing.T
	bin      string
	root     string // scratch directory
	etcd     *exec.Cmd
	etcdDone chan struct{}
	nodes    []*node
	backends []*netns.NS
	client   *netns.NS
	all      []*netns.NS
	kv       *clientv3.Client
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func (c *cluster) newNS(prefix string) *netns.NS {
	ns, err := netns.New(prefix)
	if err != nil {
		c.t.Fatal(err)
	}
	c.all = append(c.all, ns)
	return ns
}

// setUp builds the topology:
//
//	client 198.18.1.2 ── root (router, etcd 198.18.0.1) ── br0 198.18.0.0/24
//	  node1 .11, node2 .12, backends .21-.23 (default via node1: NAT)
//	root routes the NAT VIP via node1 and the DR VIP via node2.
func setUp(t *testing.T) *cluster {
	if !testenv.InVM() {
		testenv.Missing(t, false, "the cluster test needs the VM kernel (IPVS); run it through make vmtest")
	}
	testenv.RequireRoot(t)
	// Not under /tmp: the VM shares the host's /tmp over 9p, where etcd's
	// bbolt cannot mmap its database; /var/tmp is on the VM's tmpfs overlay.
	root, err := os.MkdirTemp("/var/tmp", "merlin-cluster-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	c := &cluster{t: t, bin: binDir(t), root: root}
	t.Cleanup(c.tearDown)
	run(t, "ip", "link", "set", "lo", "up")
	run(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	run(t, "ip", "link", "add", "br0", "type", "bridge")
	run(t, "ip", "addr", "add", "198.18.0.1/24", "dev", "br0")
	run(t, "ip", "link", "set", "br0", "up")
	attach := func(ns *netns.NS, ifname, addr, gw string) {
		host := "v" + ns.Name[len(ns.Name)-6:]
		run(t, "ip", "link", "add", host, "type", "veth", "peer", "name", ifname, "netns", ns.Name)
		run(t, "ip", "link", "set", host, "master", "br0", "up")
		nsRun(t, ns, "ip", "addr", "add", addr+"/24", "dev", ifname)
		nsRun(t, ns, "ip", "link", "set", ifname, "up")
		nsRun(t, ns, "ip", "route", "add", "default", "via", gw)
	}
	for i := range 2 {
		n := &node{name: fmt.Sprintf("node%d", i+1), ns: c.newNS("node-"), addr: fmt.Sprintf("198.18.0.%d", 11+i)}
		n.dataDir = filepath.Join(c.root, n.name)
		attach(n.ns, "eth0", n.addr, "198.18.0.1")
		c.nodes = append(c.nodes, n)
	}
	for i := range 3 {
		b := c.newNS("backend-")
		addr := fmt.Sprintf("198.18.0.%d", 21+i)
		attach(b, "eth0", addr, "198.18.0.11") // NAT replies go back through node1
		// Direct routing: the VIP on loopback, never answered for in ARP,
		// and replies from it go straight to the router.
		nsRun(t, b, "ip", "addr", "add", drVIP+"/32", "dev", "lo")
		nsRun(t, b, "sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.all.arp_announce=2")
		nsRun(t, b, "ip", "rule", "add", "from", drVIP, "table", "100")
		nsRun(t, b, "ip", "route", "add", "default", "via", "198.18.0.1", "table", "100")
		c.backends = append(c.backends, b)
		c.serve(b, fmt.Sprintf("backend%d", i+1), addr+":8080")
		c.serve(b, fmt.Sprintf("backend%d", i+1), drVIP+":80")
	}
	c.client = c.newNS("client-")
	run(t, "ip", "link", "add", "vclient", "type", "veth", "peer", "name", "eth0", "netns", c.client.Name)
	run(t, "ip", "addr", "add", "198.18.1.1/24", "dev", "vclient")
	run(t, "ip", "link", "set", "vclient", "up")
	nsRun(t, c.client, "ip", "addr", "add", "198.18.1.2/24", "dev", "eth0")
	nsRun(t, c.client, "ip", "link", "set", "eth0", "up")
	nsRun(t, c.client, "ip", "route", "add", "default", "via", "198.18.1.1")
	run(t, "ip", "route", "add", natVIP+"/32", "via", "198.18.0.11")
	run(t, "ip", "route", "add", drVIP+"/32", "via", "198.18.0.12")

	c.startEtcd()
	kv, err := clientv3.New(clientv3.Config{Endpoints: []string{etcdURL}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	c.kv = kv
	for _, n := range c.nodes {
		c.startNode(n)
	}
	for _, n := range c.nodes {
		c.waitReady(n)
	}
	return c
}

func (c *cluster) tearDown() {
	for _, n := range c.nodes {
		c.stopNode(n, syscall.SIGKILL)
	}
	c.stopEtcd()
	if c.kv != nil {
		c.kv.Close()
	}
	for _, ns := range c.all {
		_ = ns.Delete()
	}
	_ = exec.Command("ip", "link", "del", "br0").Run()
	_ = exec.Command("ip", "link", "del", "vclient").Run()
	if c.t.Failed() {
		b, _ := os.ReadFile(filepath.Join(c.root, "etcd.log"))
		c.t.Logf("etcd log:\n%s", b)
		for _, n := range c.nodes {
			b, _ := os.ReadFile(filepath.Join(c.root, n.name+".log"))
			lines := strings.Split(string(b), "\n")
			if len(lines) > 60 {
				lines = lines[len(lines)-60:]
			}
			c.t.Logf("%s log (tail):\n%s", n.name, strings.Join(lines, "\n"))
		}
	}
}

// serve answers each connection with the backend's name, then echoes
// lines until the client closes.
func (c *cluster) serve(ns *netns.NS, name, addr string) {
	var ln net.Listener
	if err := ns.Do(func() (err error) { ln, err = net.Listen("tcp4", addr); return err }); err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				fmt.Fprintln(conn, name)
				_, _ = io.Copy(conn, conn)
			}()
		}
	}()
}

func (c *cluster) startEtcd() {
	dir := filepath.Join(c.root, "etcd")
	log, err := os.OpenFile(filepath.Join(c.root, "etcd.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		c.t.Fatal(err)
	}
	cmd := exec.Command("etcd", "--name", "e", "--data-dir", dir,
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
		"--initial-cluster", "e=http://127.0.0.1:2380", "--log-level", "error", "--logger", "zap")
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); log.Close(); close(done) }()
	c.etcd, c.etcdDone = cmd, done
	c.eventually("etcd healthy", 60*time.Second, func() error {
		resp, err := http.Get(etcdURL + "/health")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	})
}

func (c *cluster) stopEtcd() {
	if c.etcd != nil {
		_ = c.etcd.Process.Kill()
		<-c.etcdDone
		c.etcd = nil
	}
}

func (c *cluster) startNode(n *node) {
	log, err := os.OpenFile(filepath.Join(c.root, n.name+".log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		c.t.Fatal(err)
	}
	cmd := n.ns.Command(filepath.Join(c.bin, "merlin"), "-node", n.name, "-store-endpoints", etcdURL,
		"-data-dir", n.dataDir, "-api-address", n.addr, "-reconcile-sync-period", resync.String(),
		"-vip-interface", "merlin0", "-director-sysctls", "-deletion-guard-min", "1")
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); log.Close(); close(done) }()
	n.cmd, n.exited, n.log = cmd, done, log
}

// stopNode signals merlin (ip netns exec replaced itself with merlin).
func (c *cluster) stopNode(n *node, sig syscall.Signal) {
	if n.cmd == nil {
		return
	}
	_ = n.cmd.Process.Signal(sig)
	select {
	case <-n.exited:
	case <-time.After(20 * time.Second):
		_ = n.cmd.Process.Kill()
		<-n.exited
	}
	n.cmd = nil
}

func (c *cluster) waitReady(n *node) {
	c.eventually(n.name+" ready", 90*time.Second, func() error {
		resp, err := http.Get("http://" + n.addr + ":4283/readyz")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			return fmt.Errorf("%d %s", resp.StatusCode, body)
		}
		return nil
	})
}

func (c *cluster) eventually(what string, timeout time.Duration, fn func() error) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		if err = fn(); err == nil {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	c.t.Fatalf("%s: not within %s: %v", what, timeout, err)
}

// meradm runs the CLI against node1's API.
func (c *cluster) meradm(args ...string) (string, error) {
	out, err := exec.Command(filepath.Join(c.bin, "meradm"), append([]string{"-H", c.nodes[0].addr, "--timeout", "30s"}, args...)...).CombinedOutput()
	return string(out), err
}

func (c *cluster) mustMeradm(args ...string) string {
	c.t.Helper()
	out, err := c.meradm(args...)
	if err != nil {
		c.t.Fatalf("meradm %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// table is a node's IPVS table as `ipvsadm -Sn` prints it, sorted, without
// the foreign service.
func (c *cluster) table(n *node) string {
	c.t.Helper()
	out, err := n.ns.Command("ipvsadm", "-Sn").CombinedOutput()
	if err != nil {
		c.t.Fatalf("ipvsadm -Sn in %s: %v\n%s", n.name, err, out)
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if l != "" && !strings.Contains(l, foreignSv) {
			lines = append(lines, l)
		}
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func (c *cluster) waitTables(what string, want string) {
	c.t.Helper()
	for _, n := range c.nodes {
		c.eventually(fmt.Sprintf("%s on %s", what, n.name), 60*time.Second, func() error {
			if got := c.table(n); got != want {
				return fmt.Errorf("table:\n%s\nwant:\n%s", got, want)
			}
			return nil
		})
	}
}

// connect opens a connection from the client and returns the backend name.
func (c *cluster) connect(addr string) (net.Conn, string, error) {
	var conn net.Conn
	err := c.client.Do(func() (err error) {
		conn, err = net.DialTimeout("tcp4", addr, 5*time.Second)
		return err
	})
	if err != nil {
		return nil, "", err
	}
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	name, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		conn.Close()
		return nil, "", err
	}
	_ = conn.SetDeadline(time.Time{})
	return conn, strings.TrimSpace(name), nil
}

func (c *cluster) tally(addr string, n int) map[string]int {
	c.t.Helper()
	got := map[string]int{}
	for i := range n {
		conn, name, err := c.connect(addr)
		if err != nil {
			c.t.Fatalf("connection %d to %s: %v", i, addr, err)
		}
		conn.Close()
		got[name]++
	}
	return got
}

// traffic connects through a VIP until stopped, counting failures.
type traffic struct {
	stop     chan struct{}
	done     chan struct{}
	ok, fail atomic.Int64
	lastErr  atomic.Value
}

func (c *cluster) startTraffic(addr string) *traffic {
	tr := &traffic{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(tr.done)
		for i := 0; i < 100000; i++ { // bounded; stopped long before
			select {
			case <-tr.stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			conn, _, err := c.connect(addr)
			if err != nil {
				tr.fail.Add(1)
				tr.lastErr.Store(err.Error())
				continue
			}
			conn.Close()
			tr.ok.Add(1)
		}
	}()
	return tr
}

func (tr *traffic) finish() (ok, fail int64, lastErr any) {
	close(tr.stop)
	<-tr.done
	return tr.ok.Load(), tr.fail.Load(), tr.lastErr.Load()
}

// opsWritten sums merlin_ipvs_ops_total of a node.
func (c *cluster) opsWritten(n *node) int {
	c.t.Helper()
	resp, err := http.Get("http://" + n.addr + ":4283/metrics")
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	total := 0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "merlin_ipvs_ops_total{") {
			f := strings.Fields(line)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			total += int(v)
		}
	}
	return total
}

func TestVMCluster(t *testing.T) {
	c := setUp(t)
	ctx := context.Background()

	// A service someone made by hand on node1: merlin must never touch it.
	nsRun(t, c.nodes[0].ns, "ipvsadm", "-A", "-t", foreignSv, "-s", "rr")

	c.mustMeradm("service", "add", "nat", "tcp", natVIP+":80", "-s", "rr")
	c.mustMeradm("service", "add", "dr", "tcp", drVIP+":80", "-s", "rr")
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
	for _, n := range c.nodes {
		if out := nsRun(t, n.ns, "ip", "addr", "show", "dev", "merlin0"); !strings.Contains(out, natVIP+"/32") || !strings.Contains(out, drVIP+"/32") {
			t.Fatalf("VIPs not on %s's merlin0:\n%s", n.name, out)
		}
	}

	t.Run("traffic NAT and DR", func(t *testing.T) {
		for _, vip := range []string{natVIP, drVIP} {
			got := c.tally(vip+":80", 12)
			if len(got) != 3 {
				t.Fatalf("connections to %s reached %v, want all three backends", vip, got)
			}
			t.Logf("%s: %v", vip, got)
		}
	})

	t.Run("weight 0 drains", func(t *testing.T) {
		held, name, err := c.connect(natVIP + ":80")
		if err != nil {
			t.Fatal(err)
		}
		defer held.Close()
		ip := map[string]string{"backend1": "198.18.0.21", "backend2": "198.18.0.22", "backend3": "198.18.0.23"}[name]
		c.mustMeradm("server", "edit", "nat", ip+":8080", "-w", "0")
		c.waitTables("weight 0", sortedLines(strings.Replace(want, "-r "+ip+":8080 -m -w 1", "-r "+ip+":8080 -m -w 0", 1)))
		if got := c.tally(natVIP+":80", 12); got[name] != 0 {
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
		tr := c.startTraffic(natVIP + ":80")
		before := []string{c.table(c.nodes[0]), c.table(c.nodes[1])}
		c.stopEtcd()
		time.Sleep(2 * resync) // at least one resync without etcd
		for i, n := range c.nodes {
			if got := c.table(n); got != before[i] {
				t.Fatalf("%s's table changed while etcd was down:\n%s", n.name, got)
			}
		}
		c.startEtcd()
		c.mustMeradm("server", "edit", "nat", "198.18.0.21:8080", "-w", "3")
		c.waitTables("change after etcd returned", sortedLines(strings.Replace(want, "-r 198.18.0.21:8080 -m -w 1", "-r 198.18.0.21:8080 -m -w 3", 1)))
		ok, fail, lastErr := tr.finish()
		if fail != 0 || ok == 0 {
			t.Fatalf("client connections during the etcd outage: %d ok, %d failed (%v)", ok, fail, lastErr)
		}
		t.Logf("client connections during the etcd outage: %d ok, 0 failed", ok)
		c.mustMeradm("server", "edit", "nat", "198.18.0.21:8080", "-w", "1")
		c.waitTables("weight back", want)
	})

	t.Run("restart writes nothing", func(t *testing.T) {
		tr := c.startTraffic(natVIP + ":80")
		n := c.nodes[0]
		c.stopNode(n, syscall.SIGKILL)
		c.startNode(n)
		c.waitReady(n)
		time.Sleep(resync + time.Second) // through a full resync too
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
		if ok, fail, lastErr := tr.finish(); fail != 0 {
			t.Fatalf("client connections during restarts: %d ok, %d failed (%v)", ok, fail, lastErr)
		}
	})

	t.Run("changes behind merlin's back are repaired", func(t *testing.T) {
		nsRun(t, c.nodes[1].ns, "ipvsadm", "-D", "-t", drVIP+":80")
		nsRun(t, c.nodes[0].ns, "ipvsadm", "-e", "-t", natVIP+":80", "-r", "198.18.0.22:8080", "-m", "-w", "9")
		start := time.Now()
		c.waitTables("repair", want)
		t.Logf("repaired within %s (resync period %s)", time.Since(start).Round(100*time.Millisecond), resync)
	})

	t.Run("one bad object does not block the others", func(t *testing.T) {
		// Written straight into etcd: "twos" is a valid scheduler name, but
		// Debian's 6.1 kernel has no ip_vs_twos module, so the kernel refuses it.
		c.mustMeradm("service", "add", "twos", "tcp", "198.19.0.30:80", "-s", "twos")
		_, err := c.kv.Put(ctx, "/merlin/services/garbage", "\x00\xffnot protobuf")
		if err != nil {
			t.Fatal(err)
		}
		c.mustMeradm("service", "add", "after", "tcp", "198.19.0.40:80", "-s", "wlc")
		withAfter := sortedLines(want + "\n-A -t 198.19.0.40:80 -s wlc")
		c.waitTables("the good service applied", withAfter)
		c.eventually("the bad one reported", 60*time.Second, func() error {
			out, _ := c.meradm("status")
			for _, n := range c.nodes {
				if !strings.Contains(out, n.name+": service twos:") {
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
		if _, err := c.kv.Delete(ctx, "/merlin/services/garbage"); err != nil {
			t.Fatal(err)
		}
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
		time.Sleep(resync + time.Second)
		for _, n := range c.nodes {
			if got := c.table(n); got != want {
				t.Fatalf("%s deleted services of a wiped prefix:\n%s", n.name, got)
			}
		}
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
		for _, n := range c.nodes {
			if !strings.Contains(out, "node "+n.name) {
				t.Fatalf("list --stats lacks %s:\n%s", n.name, out)
			}
		}
		if !strings.Contains(out, "[nat]") {
			t.Fatalf("list --stats:\n%s", out)
		}
	})

	// Through all of it, the hand-made service stayed.
	if out := nsRun(t, c.nodes[0].ns, "ipvsadm", "-Sn"); !strings.Contains(out, foreignSv) {
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
