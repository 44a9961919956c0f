// Command demo shows merlin's main job on a real kernel: inside the test VM
// (see `make demo`) it starts an etcd and two merlin nodes, each in its own
// network namespace, with three backends and a client; creates a NAT and a
// direct-routing service with meradm; both nodes announce the
// direct-routing VIP by BGP to a bird2 router, which installs an ECMP route;
// sends real TCP connections through both VIPs; prints each node's IPVS
// table and where the connections went; then drains one node. It needs
// root, a kernel with IPVS, bird2, and bin/merlin and bin/meradm.
package main

import (
	"flag"
	"fmt"
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
		// eBPF counters on the node's one interface, both ways.
		counters := []string{"-counters-xdp-interfaces", "eth0", "-counters-tc-interfaces", "eth0", "-counters-pin-dir", lab.BPFFS + "/" + n.Name}
		return append(lab.BGPArgs(n, "graceful_restart=120s"), counters...)
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
	return nil
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
