// Package lab builds a merlin cluster on one kernel: an etcd (Debian's
// binary) in the root network namespace, merlin nodes, backends and a
// client in namespaces of their own, joined by a bridge and veth pairs.
// The VM tests and `make demo` use it inside the test VM. It needs root, a
// kernel with IPVS, and the merlin and meradm binaries.
//
//	client 198.18.1.2 ── root (router; etcd on 198.18.0.1) ── br0 198.18.0.0/24
//	  nodes 198.18.0.11, .12, …; backends 198.18.0.21, .22, … (default via the first node)
//
// Each backend answers on :8080 (for NAT) and on the DR VIP :80 with its
// name, then echoes lines. The root namespace routes NATVIP via the first
// node and DRVIP via the second.
package lab

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/merlin-ipvs/merlin/internal/netns"
)

// Addresses of the lab.
const (
	EtcdURL = "http://198.18.0.1:2379"
	NATVIP  = "198.19.0.10"
	DRVIP   = "198.19.0.20"
	// BPFFS is a bpffs for the nodes' pinned counters, outside /sys (which
	// `ip netns exec` remounts).
	BPFFS = "/run/merlin-lab-bpf"
)

// Node is one merlin node.
type Node struct {
	Name    string
	NS      *netns.NS
	Addr    string
	DataDir string
	Args    []string // extra merlin flags
	Link    string   // the root namespace's end of its veth (on br0)
	cmd     *exec.Cmd
	exited  chan struct{}
}

// Lab is a running cluster.
type Lab struct {
	Bin      string // directory with merlin and meradm
	Root     string // scratch directory (not under /tmp: see New)
	Nodes    []*Node
	Backends []*netns.NS
	Client   *netns.NS
	// RouterBFD: the router runs BFD (300 ms × 3) with every node whose
	// peer setting has bfd; set before StartRouter.
	RouterBFD bool

	etcd        *exec.Cmd
	etcdDone    chan struct{}
	all         []*netns.NS
	listeners   []net.Listener
	packetConns []net.PacketConn
	nat         map[int]net.Listener // each backend's :8080 listener
}

// Config sizes the lab.
type Config struct {
	Bin       string
	Nodes     int      // default 2
	Backends  int      // default 3
	MerlinArg []string // extra flags for every node
	// NodeArg gives a node's own extra flags (e.g. its BGP router ID).
	NodeArg func(n *Node) []string
	// TopologyOnly builds the network, backends and client but starts
	// neither etcd nor merlin: the test brings its own (the deploying
	// guide's steps).
	TopologyOnly bool
}

func sh(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Run runs a command in a namespace and returns its output.
func Run(ns *netns.NS, name string, args ...string) (string, error) {
	out, err := ns.Command(name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s in %s: %w: %s", name, strings.Join(args, " "), ns.Name, err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// New builds the topology, starts etcd and the merlin nodes, and waits
// until every node is ready. Close undoes it, also after a failed New.
func New(cfg Config) (l *Lab, err error) {
	if cfg.Nodes == 0 {
		cfg.Nodes = 2
	}
	if cfg.Backends == 0 {
		cfg.Backends = 3
	}
	for _, b := range []string{"merlin", "meradm"} {
		if _, err := os.Stat(filepath.Join(cfg.Bin, b)); err != nil {
			return nil, fmt.Errorf("%s/%s missing: run `make build` first: %w", cfg.Bin, b, err)
		}
	}
	// Not under /tmp: the VM shares the host's /tmp over 9p, where etcd's
	// bbolt cannot mmap its database; /var/tmp is on the VM's tmpfs overlay.
	root, err := os.MkdirTemp("/var/tmp", "merlin-lab-")
	if err != nil {
		return nil, err
	}
	l = &Lab{Bin: cfg.Bin, Root: root, nat: map[int]net.Listener{}}
	defer func() {
		if err != nil {
			l.Close()
			l = nil
		}
	}()
	for _, c := range [][]string{
		{"ip", "link", "set", "lo", "up"},
		{"sysctl", "-qw", "net.ipv4.ip_forward=1"},
		{"ip", "link", "add", "br0", "type", "bridge"},
		{"ip", "addr", "add", "198.18.0.1/24", "dev", "br0"},
		{"ip", "link", "set", "br0", "up"},
		{"mkdir", "-p", BPFFS},
		{"sh", "-c", "mountpoint -q " + BPFFS + " || mount -t bpf bpf " + BPFFS},
		{"sh", "-c", "rm -rf " + BPFFS + "/*"}, // an earlier lab's pins
	} {
		if err := sh(c[0], c[1:]...); err != nil {
			return l, err
		}
	}
	newNS, attach := l.newNS, l.attach
	for i := range cfg.Nodes {
		ns, err := newNS("node-")
		if err != nil {
			return l, err
		}
		n := &Node{Name: fmt.Sprintf("node%d", i+1), NS: ns, Addr: fmt.Sprintf("198.18.0.%d", 11+i), Args: cfg.MerlinArg}
		n.DataDir = filepath.Join(root, n.Name)
		if cfg.NodeArg != nil {
			n.Args = append(slices.Clone(n.Args), cfg.NodeArg(n)...)
		}
		if err := attach(ns, n.Addr, "198.18.0.1"); err != nil {
			return l, err
		}
		n.Link = "v" + ns.Name[len(ns.Name)-6:]
		l.Nodes = append(l.Nodes, n)
	}
	for i := range cfg.Backends {
		b, err := newNS("backend-")
		if err != nil {
			return l, err
		}
		addr := fmt.Sprintf("198.18.0.%d", 21+i)
		if err := attach(b, addr, "198.18.0.11"); err != nil { // NAT replies go back through the first node
			return l, err
		}
		// Direct routing: the VIP on loopback, never answered for in ARP,
		// and replies from it go straight to the router.
		for _, c := range [][]string{
			{"ip", "addr", "add", DRVIP + "/32", "dev", "lo"},
			{"sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.all.arp_announce=2"},
			{"ip", "rule", "add", "from", DRVIP, "table", "100"},
			{"ip", "route", "add", "default", "via", "198.18.0.1", "table", "100"},
		} {
			if _, err := Run(b, c[0], c[1:]...); err != nil {
				return l, err
			}
		}
		l.Backends = append(l.Backends, b)
		name := fmt.Sprintf("backend%d", i+1)
		if err := l.StartBackend(i); err != nil {
			return l, err
		}
		if _, err := l.serve(b, name, DRVIP+":80"); err != nil {
			return l, err
		}
	}
	if l.Client, err = newNS("client-"); err != nil {
		return l, err
	}
	if err := sh("ip", "link", "add", "vclient", "type", "veth", "peer", "name", "eth0", "netns", l.Client.Name); err != nil {
		return l, err
	}
	for _, c := range [][]string{{"ip", "addr", "add", "198.18.1.1/24", "dev", "vclient"}, {"ip", "link", "set", "vclient", "up"},
		{"ip", "route", "add", NATVIP + "/32", "via", "198.18.0.11"}, {"ip", "route", "add", DRVIP + "/32", "via", "198.18.0.12"}} {
		if err := sh(c[0], c[1:]...); err != nil {
			return l, err
		}
	}
	// The client's whole port range: a test's tens of thousands of short
	// connections to one VIP then do not reuse a source port (the default
	// range has 14,000 even ports, which connect takes first). A reused
	// 4-tuple can meet a copy of its old connection that connection sync
	// left on the other node, stale if the sync of its close was lost (an
	// ESTABLISHED copy lasts 15 minutes): IPVS forwards the new SYN by that
	// entry and counts no new connection anywhere. In CI one connection of
	// 23,840 was counted nowhere, after the port range had wrapped.
	for _, c := range [][]string{{"ip", "addr", "add", "198.18.1.2/24", "dev", "eth0"}, {"ip", "link", "set", "eth0", "up"}, {"ip", "route", "add", "default", "via", "198.18.1.1"},
		{"sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535"}} {
		if _, err := Run(l.Client, c[0], c[1:]...); err != nil {
			return l, err
		}
	}
	if cfg.TopologyOnly {
		return l, nil
	}
	if err := l.StartEtcd(); err != nil {
		return l, err
	}
	for _, n := range l.Nodes {
		if err := l.StartNode(n); err != nil {
			return l, err
		}
	}
	for _, n := range l.Nodes {
		if err := l.WaitReady(n); err != nil {
			return l, err
		}
	}
	return l, nil
}

func (l *Lab) newNS(prefix string) (*netns.NS, error) {
	ns, err := netns.New(prefix)
	if err == nil {
		l.all = append(l.all, ns)
	}
	return ns, err
}

// attach joins a namespace to br0 with addr, routing through gw.
func (l *Lab) attach(ns *netns.NS, addr, gw string) error {
	host := "v" + ns.Name[len(ns.Name)-6:]
	if err := sh("ip", "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", ns.Name); err != nil {
		return err
	}
	if err := sh("ip", "link", "set", host, "master", "br0", "up"); err != nil {
		return err
	}
	for _, c := range [][]string{{"ip", "addr", "add", addr + "/24", "dev", "eth0"}, {"ip", "link", "set", "eth0", "up"}, {"ip", "route", "add", "default", "via", gw}} {
		if _, err := Run(ns, c[0], c[1:]...); err != nil {
			return err
		}
	}
	return nil
}

// AddMachine is a namespace of its own on br0 with addr (another machine
// of the site, such as an etcd member); Close removes it.
func (l *Lab) AddMachine(prefix, addr string) (*netns.NS, error) {
	ns, err := l.newNS(prefix)
	if err != nil {
		return nil, err
	}
	return ns, l.attach(ns, addr, "198.18.0.1")
}

// Close stops everything and removes the namespaces and links.
func (l *Lab) Close() {
	for _, n := range l.Nodes {
		l.StopNode(n, syscall.SIGKILL)
	}
	l.StopEtcd()
	for _, ln := range l.listeners {
		ln.Close()
	}
	for _, pc := range l.packetConns {
		pc.Close()
	}
	for _, ns := range l.all {
		_ = ns.Delete()
	}
	_ = exec.Command("ip", "link", "del", "br0").Run()
	_ = exec.Command("ip", "link", "del", "vclient").Run()
}

// RemoveScratch deletes the scratch directory (logs, data).
func (l *Lab) RemoveScratch() { os.RemoveAll(l.Root) }

// Log returns the last lines of a log in the scratch directory ("etcd", "node1", …).
func (l *Lab) Log(name string, lines int) string {
	b, _ := os.ReadFile(filepath.Join(l.Root, name+".log"))
	all := strings.Split(string(b), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}

// BackendAddr is backend i's address (0-based).
func BackendAddr(i int) string { return fmt.Sprintf("198.18.0.%d", 21+i) }

// StopBackend closes backend i's NAT listener (:8080): connections to it
// are refused, as when the service crashed.
func (l *Lab) StopBackend(i int) {
	if ln := l.nat[i]; ln != nil {
		ln.Close()
		delete(l.nat, i)
	}
}

// StartBackend (re)opens backend i's NAT listener.
func (l *Lab) StartBackend(i int) error {
	if l.nat[i] != nil {
		return nil
	}
	ln, err := l.serve(l.Backends[i], fmt.Sprintf("backend%d", i+1), BackendAddr(i)+":8080")
	if err != nil {
		return err
	}
	l.nat[i] = ln
	return nil
}

func (l *Lab) serve(ns *netns.NS, name, addr string) (net.Listener, error) {
	var ln net.Listener
	if err := ns.Do(func() (err error) { ln, err = net.Listen("tcp4", addr); return err }); err != nil {
		return nil, err
	}
	l.listeners = append(l.listeners, ln)
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
	return ln, nil
}

// StartEtcd starts (or restarts, with its data) the etcd and waits until healthy.
func (l *Lab) StartEtcd() error {
	log, err := os.OpenFile(filepath.Join(l.Root, "etcd.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command("etcd", "--name", "e", "--data-dir", filepath.Join(l.Root, "etcd"),
		"--listen-client-urls", EtcdURL, "--advertise-client-urls", EtcdURL,
		"--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
		"--initial-cluster", "e=http://127.0.0.1:2380", "--log-level", "error", "--logger", "zap")
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		log.Close()
		return fmt.Errorf("start etcd: %w", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); log.Close(); close(done) }()
	l.etcd, l.etcdDone = cmd, done
	return Eventually(60*time.Second, func() error {
		resp, err := http.Get(EtcdURL + "/health")
		if err != nil {
			return fmt.Errorf("etcd: %w", err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("etcd health: status %d", resp.StatusCode)
		}
		return nil
	})
}

// StopEtcd kills the etcd.
func (l *Lab) StopEtcd() {
	if l.etcd != nil {
		_ = l.etcd.Process.Kill()
		<-l.etcdDone
		l.etcd = nil
	}
}

// SignalEtcd sends the etcd a signal (SIGSTOP and SIGCONT pause it).
func (l *Lab) SignalEtcd(sig syscall.Signal) error {
	if l.etcd == nil {
		return fmt.Errorf("etcd is not running")
	}
	return l.etcd.Process.Signal(sig)
}

// Running reports whether merlin runs on the node.
func (n *Node) Running() bool { return n.cmd != nil }

// Signal sends merlin on the node a signal (SIGHUP: re-read its file).
func (n *Node) Signal(sig syscall.Signal) error {
	if n.cmd == nil {
		return fmt.Errorf("%s: merlin is not running", n.Name)
	}
	return n.cmd.Process.Signal(sig)
}

// Pid is merlin's process ID on the node (0 when stopped).
func (n *Node) Pid() int {
	if n.cmd == nil {
		return 0
	}
	return n.cmd.Process.Pid
}

// StartNode starts merlin on a node (again).
func (l *Lab) StartNode(n *Node) error {
	log, err := os.OpenFile(filepath.Join(l.Root, n.Name+".log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	// The lab's network is the test's own: the API without certificates
	// and the metrics on the node's address are what the tests reach;
	// traffic counters read every second, so that tests see them soon.
	args := append([]string{"-node", n.Name, "-store-endpoints", EtcdURL, "-data-dir", n.DataDir, "-api-address", n.Addr, "-insecure-api",
		"-health-address", n.Addr, "-metrics-read-interval", "1s",
		"-vip-interface", "merlin0", "-director-sysctls"}, n.Args...)
	cmd := n.NS.Command(filepath.Join(l.Bin, "merlin"), args...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		log.Close()
		return fmt.Errorf("start merlin on %s: %w", n.Name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); log.Close(); close(done) }()
	n.cmd, n.exited = cmd, done
	return nil
}

// StopNode signals merlin (`ip netns exec` replaced itself with it) and waits.
func (l *Lab) StopNode(n *Node, sig syscall.Signal) {
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

// WaitReady waits until the node's /readyz answers 200.
func (l *Lab) WaitReady(n *Node) error {
	return Eventually(90*time.Second, func() error { return l.Ready(n) })
}

// Ready asks the node's /readyz once.
func (l *Lab) Ready(n *Node) error {
	resp, err := http.Get("http://" + n.Addr + ":4283/readyz")
	if err != nil {
		return fmt.Errorf("%s: %w", n.Name, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return fmt.Errorf("%s not ready: %d %s", n.Name, resp.StatusCode, body)
	}
	return nil
}

// Echo sends a line over a connection to a backend (they echo what they
// read) and reads it back, within 10 s.
func Echo(conn net.Conn, line string) error { return EchoWithin(conn, line, 10*time.Second) }

// EchoWithin is Echo within d.
func EchoWithin(conn net.Conn, line string, d time.Duration) error {
	_ = conn.SetDeadline(time.Now().Add(d))
	defer conn.SetDeadline(time.Time{})
	if _, err := fmt.Fprintln(conn, line); err != nil {
		return fmt.Errorf("send %q: %w", line, err)
	}
	buf := make([]byte, len(line)+1)
	if _, err := io.ReadFull(conn, buf); err != nil {
		return fmt.Errorf("echo of %q: %w", line, err)
	}
	if string(buf) != line+"\n" {
		return fmt.Errorf("echo %q, want %q", buf, line)
	}
	return nil
}

// Eventually retries fn until it succeeds or the timeout passes.
func Eventually(timeout time.Duration, fn func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %s: %w", timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Meradm runs the CLI against the first node's API.
func (l *Lab) Meradm(args ...string) (string, error) { return l.MeradmVia(l.Nodes[0], args...) }

// MeradmVia runs the CLI against node n's API.
func (l *Lab) MeradmVia(n *Node, args ...string) (string, error) {
	out, err := exec.Command(filepath.Join(l.Bin, "meradm"), append([]string{"-H", n.Addr, "--timeout", "30s"}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("meradm %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// Table is a node's IPVS table as `ipvsadm -Sn` prints it, sorted, without
// lines containing any of skip.
func (l *Lab) Table(n *Node, skip ...string) (string, error) {
	out, err := Run(n.NS, "ipvsadm", "-Sn")
	if err != nil {
		return "", err
	}
	var lines []string
outer:
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		for _, s := range skip {
			if strings.Contains(line, s) {
				continue outer
			}
		}
		if line != "" {
			lines = append(lines, line)
		}
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n"), nil
}

// Connect opens a connection from the client and returns it with the name
// of the backend that answered.
func (l *Lab) Connect(addr string) (net.Conn, string, error) {
	var conn net.Conn
	err := l.Client.Do(func() (err error) {
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

// Tally makes n connections and counts which backend answered each.
func (l *Lab) Tally(addr string, n int) (map[string]int, error) {
	got := map[string]int{}
	for i := range n {
		conn, name, err := l.Connect(addr)
		if err != nil {
			return got, fmt.Errorf("connection %d to %s: %w", i, addr, err)
		}
		conn.Close()
		got[name]++
	}
	return got, nil
}
