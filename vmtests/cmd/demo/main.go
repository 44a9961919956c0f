// Command demo shows merlin's main job on a real kernel: inside the test VM
// (see `make demo`) it starts an etcd and two merlin nodes, each in its own
// network namespace, with three backends and a client; creates a NAT and a
// direct-routing service with meradm; both nodes announce the
// direct-routing VIP by BGP to a bird2 router, which installs an ECMP route;
// sends real TCP connections through both VIPs; prints each node's IPVS
// table and where the connections went; then drains one node, and shows a
// connection surviving its director's death (connection sync). It needs
// root, a kernel with IPVS, bird2, and bin/merlin and bin/meradm.
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/merlin-ipvs/merlin/vmtests/lab"
)

func main() {
	conns := flag.Int("connections", 30, "client connections to send through each VIP")
	bin := flag.String("bin", "", "directory with merlin and meradm (default: beside this program)")
	flag.Parse()
	if *bin == "" {
		exe, _ := os.Executable()
		*bin = filepath.Dir(exe)
	}
	if err := run(*bin, *conns); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(bin string, conns int) error {
	fmt.Println("starting etcd and two merlin nodes (node1 198.18.0.11, node2 198.18.0.12) in their own network namespaces ...")
	l, err := lab.New(lab.Config{Bin: bin, NodeArg: func(n *lab.Node) []string {
		// eBPF counters on the node's one interface, both ways, every
		// per-backend family exported (the demo holds them against IPVS's).
		counters := []string{"-counters-xdp-interfaces", "eth0", "-counters-tc-interfaces", "eth0", "-counters-pin-dir", lab.BPFFS + "/" + n.Name,
			"-metrics-backend-families", "all"}
		sync := []string{"-sync-interface", "eth0", "-sync-id", "1"} // IPVS connection sync, master and backup
		return append(append(lab.BGPArgs(n, "graceful_restart=120s"), counters...), sync...)
	}})
	if err != nil {
		return err
	}
	defer l.RemoveScratch()
	defer l.Close()
	// The direct-routing VIP reaches the nodes by BGP: bird2 in the VM's
	// root namespace is the router.
	if out, err := exec.Command("ip", "route", "del", lab.DRVIP+"/32").CombinedOutput(); err != nil {
		return fmt.Errorf("ip route del: %w: %s", err, out)
	}
	r, err := l.StartRouter()
	if err != nil {
		return err
	}
	defer r.Stop()
	steps := [][]string{
		{"service", "add", "web", "tcp", lab.NATVIP + ":80", "-s", "wrr"},
		{"server", "add", "web", "198.18.0.21:8080", "-w", "1", "-f", "masq"},
		{"server", "add", "web", "198.18.0.22:8080", "-w", "2", "-f", "masq"},
		{"server", "add", "web", "198.18.0.23:8080", "-w", "3", "-f", "masq"},
		{"service", "add", "web-dr", "tcp", lab.DRVIP + ":80", "-s", "mh", "-b", "mh-fallback", "--forward-method", "route"},
		{"server", "add", "web-dr", "198.18.0.21:80"},
		{"server", "add", "web-dr", "198.18.0.22:80"},
		{"server", "add", "web-dr", "198.18.0.23:80"},
	}
	for _, s := range steps {
		fmt.Println("$ meradm", strings.Join(s, " "))
		if _, err := l.Meradm(s...); err != nil {
			return err
		}
	}
	out, err := l.Meradm("list")
	if err != nil {
		return err
	}
	fmt.Printf("\n$ meradm list\n%s", out)
	// Both nodes converge on the same table.
	err = lab.Eventually(60*time.Second, func() error {
		for _, n := range l.Nodes {
			t, err := l.Table(n)
			if err != nil {
				return err
			}
			if strings.Count(t, "\n-a ") < 5 {
				return fmt.Errorf("%s not programmed yet:\n%s", n.Name, t)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, n := range l.Nodes {
		out, err := lab.Run(n.NS, "ipvsadm", "-Ln")
		if err != nil {
			return err
		}
		fmt.Printf("\n%s (ipvsadm -Ln):\n%s", n.Name, out)
	}
	if err := r.WaitNextHops(lab.DRVIP, 90*time.Second, l.Nodes[0].Addr, l.Nodes[1].Addr); err != nil {
		return err
	}
	route, _ := exec.Command("ip", "route", "show", lab.DRVIP).CombinedOutput()
	fmt.Printf("\nthe router learned %s from both nodes by BGP (ip route show %s):\n%s", lab.DRVIP, lab.DRVIP, route)
	for _, t := range []struct{ name, vip string }{{"NAT via node1, weights 1:2:3", lab.NATVIP}, {"direct routing, ECMP over both nodes, maglev hashing", lab.DRVIP}} {
		got, err := l.Tally(t.vip+":80", conns)
		if err != nil {
			return err
		}
		fmt.Printf("\n%d client connections to %s:80 (%s) went to:\n", conns, t.vip, t.name)
		names := make([]string, 0, len(got))
		for n := range got {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			fmt.Printf("  %-10s %d\n", n, got[n])
		}
	}
	if err := printCounters(l.Nodes[0]); err != nil {
		return err
	}
	out, err = l.Meradm("status")
	if err != nil {
		return err
	}
	fmt.Printf("\n$ meradm status\n%s", out)
	out, err = l.Meradm("list", "--stats")
	if err != nil {
		return err
	}
	fmt.Printf("\n$ meradm list --stats\n%s", out)
	fmt.Println("\n$ meradm node drain node2 --withdraw-after 5s")
	if _, err := l.Meradm("node", "drain", "node2", "--withdraw-after", "5s"); err != nil {
		return err
	}
	if err := r.WaitNextHops(lab.DRVIP, 60*time.Second, l.Nodes[0].Addr); err != nil {
		return err
	}
	route, _ = exec.Command("ip", "route", "show", lab.DRVIP).CombinedOutput()
	fmt.Printf("the router now sends %s to node1 only:\n%s", lab.DRVIP, route)
	got, err := l.Tally(lab.DRVIP+":80", conns)
	if err != nil {
		return err
	}
	fmt.Printf("%d more connections, all through node1, went to %v\n", conns, got)
	return survivesDirectorDeath(l, r)
}

// survivesDirectorDeath opens a connection carried by node1, shows it
// synced to node2, cuts node1's link and talks over it again: the router
// moves it to node2 (after the BGP hold time), which knows its server.
func survivesDirectorDeath(l *lab.Lab, r *lab.Router) error {
	fmt.Println("\n$ meradm node undrain node2")
	if _, err := l.Meradm("node", "undrain", "node2"); err != nil {
		return err
	}
	node1, node2 := l.Nodes[0], l.Nodes[1]
	if err := r.WaitNextHops(lab.DRVIP, 60*time.Second, node1.Addr, node2.Addr); err != nil {
		return err
	}
	conn, port, backend, err := connectVia(l, node1)
	if err != nil {
		return err
	}
	defer conn.Close()
	fmt.Printf("a connection from client port %d to %s, carried by node1, served by %s\n", port, lab.DRVIP, backend)
	err = lab.Eventually(30*time.Second, func() error {
		out, err := lab.Run(node2.NS, "ipvsadm", "-Lnc")
		if err == nil && !strings.Contains(out, fmt.Sprintf(":%d ", port)) {
			err = fmt.Errorf("node2 does not hold it yet")
		}
		return err
	})
	if err != nil {
		return err
	}
	fmt.Println("node2 holds it too (connection sync): ipvsadm -Lnc on node2 lists it")
	fmt.Println("$ ip link set", node1.Link, "down   # node1 dies")
	if out, err := exec.Command("ip", "link", "set", node1.Link, "down").CombinedOutput(); err != nil {
		return fmt.Errorf("%w: %s", err, out)
	}
	defer exec.Command("ip", "link", "set", node1.Link, "up").Run()
	if err := r.WaitNextHops(lab.DRVIP, 60*time.Second, node2.Addr); err != nil {
		return err
	}
	fmt.Println("the router sends", lab.DRVIP, "to node2 only (node1's session timed out)")
	if err := lab.Echo(conn, "still there?"); err != nil {
		return fmt.Errorf("the connection did not survive: %w", err)
	}
	fmt.Printf("the connection carried on through node2, to %s: echoed \"still there?\"\n", backend)
	return nil
}

// connectVia opens client connections to the DR VIP until one goes
// through node n.
func connectVia(l *lab.Lab, n *lab.Node) (net.Conn, int, string, error) {
	for range 20 {
		conn, backend, err := l.Connect(lab.DRVIP + ":80")
		if err != nil {
			return nil, 0, "", err
		}
		port := conn.LocalAddr().(*net.TCPAddr).Port
		if out, err := lab.Run(n.NS, "ipvsadm", "-Lnc"); err == nil && strings.Contains(out, fmt.Sprintf(":%d ", port)) {
			return conn, port, backend, lab.Echo(conn, "hello")
		}
		conn.Close()
	}
	return nil, 0, "", fmt.Errorf("no connection of 20 went through %s", n.Name)
}

// printCounters shows node1's eBPF counters of the NAT service (web) beside the
// kernel's own IPVS counters, from its /metrics.
func printCounters(n *lab.Node) error {
	get := func(name string) (map[string]float64, error) { return lab.Series(n, name) }
	fwd, err := get("merlin_tc_forwarded_packets_total")
	if err != nil {
		return err
	}
	kernel, err := get("merlin_ipvs_backend_incoming_packets_total")
	if err != nil {
		return err
	}
	synack, err := get("merlin_tc_reply_synack_total")
	if err != nil {
		return err
	}
	xdp, err := get("merlin_xdp_packets_total")
	if err != nil {
		return err
	}
	fmt.Printf("\n%s's eBPF counters for service web (NAT; from /metrics), beside the kernel's IPVS counters:\n", n.Name)
	fmt.Printf("  %-22s %18s %18s %14s\n", "server", "forwarded (TC)", "IPVS in packets", "SYN-ACKs back")
	var keys []string
	for k := range fwd {
		if strings.HasSuffix(k, ",service=web") {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		server := strings.TrimPrefix(strings.Split(k, ",")[0], "server=")
		fmt.Printf("  %-22s %18.0f %18.0f %14.0f\n", server, fwd[k], kernel[k], synack[k])
	}
	fmt.Printf("  packets to the VIP at XDP, before IPVS: %.0f\n", xdp["service=web"])
	return nil
}
