// Command demo shows merlin's datapath on a real kernel: inside the test VM
// (see `make demo`) it builds a client, a director and three backends in
// their own network namespaces, programs a NAT virtual service on the
// director through datapath/ipvs, sends real TCP connections through the
// VIP, and prints the IPVS table and where the connections went.
// It needs root and a kernel with IPVS.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"sort"
	"strings"
	"time"

	"github.com/merlin-ipvs/merlin/datapath/ipvs"
	"github.com/merlin-ipvs/merlin/internal/netns"
)

func main() {
	conns := flag.Int("connections", 30, "client connections to send through the VIP")
	flag.Parse()
	if err := run(*conns); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

const (
	vip     = "198.18.0.10"
	vipPort = 80
)

func run(conns int) error {
	var all []*netns.NS
	defer func() {
		for _, ns := range all {
			_ = ns.Delete()
		}
	}()
	mk := func() (*netns.NS, error) {
		ns, err := netns.New("demo-")
		if err == nil {
			all = append(all, ns)
		}
		return ns, err
	}
	director, err := mk()
	if err != nil {
		return err
	}
	client, err := mk()
	if err != nil {
		return err
	}
	var script []string
	sh := func(ns *netns.NS, cmd string) { script = append(script, "ip netns exec "+ns.Name+" "+cmd) }
	script = append(script, fmt.Sprintf("ip link add c0 netns %s type veth peer name d0 netns %s", client.Name, director.Name))
	sh(client, "ip addr add 198.18.1.2/24 dev c0")
	sh(client, "ip link set c0 up")
	sh(client, "ip route add default via 198.18.1.1")
	sh(director, "ip addr add 198.18.1.1/24 dev d0")
	sh(director, "ip link set d0 up")
	sh(director, "ip addr add "+vip+"/32 dev lo")
	sh(director, "sysctl -qw net.ipv4.ip_forward=1")

	var reals []ipvs.Destination
	var listeners []net.Listener
	defer func() {
		for _, l := range listeners {
			l.Close()
		}
	}()
	backends := make([]*netns.NS, 3)
	for i := range backends {
		if backends[i], err = mk(); err != nil {
			return err
		}
		b := backends[i]
		script = append(script, fmt.Sprintf("ip link add b%d netns %s type veth peer name d%d netns %s", i, b.Name, i+1, director.Name))
		sh(b, fmt.Sprintf("ip addr add 198.19.%d.2/24 dev b%d", i, i))
		sh(b, fmt.Sprintf("ip link set b%d up", i))
		sh(b, fmt.Sprintf("ip route add default via 198.19.%d.1", i))
		sh(director, fmt.Sprintf("ip addr add 198.19.%d.1/24 dev d%d", i, i+1))
		sh(director, fmt.Sprintf("ip link set d%d up", i+1))
		reals = append(reals, ipvs.Destination{
			Key:    ipvs.DestinationKey{Address: netip.AddrFrom4([4]byte{198, 19, byte(i), 2}), Port: 8080},
			Config: ipvs.DestinationConfig{Weight: uint32(i + 1), Forward: ipvs.Masquerade},
		})
	}
	for _, line := range script {
		f := strings.Fields(line)
		if out, err := exec.Command(f[0], f[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %w: %s", line, err, out)
		}
	}
	for i, b := range backends {
		var ln net.Listener
		addr := fmt.Sprintf("198.19.%d.2:8080", i)
		if err := b.Do(func() (err error) { ln, err = net.Listen("tcp4", addr); return err }); err != nil {
			return err
		}
		listeners = append(listeners, ln)
		go serve(ln, fmt.Sprintf("backend-%d (%s, weight %d)", i+1, addr, i+1))
	}

	c, err := ipvs.Open(ipvs.Options{NetNS: director.FD()})
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	desired := []ipvs.VirtualServer{{
		Service: ipvs.Service{
			Key:    ipvs.ServiceKey{Protocol: ipvs.TCP, Address: netip.MustParseAddr(vip), Port: vipPort},
			Config: ipvs.ServiceConfig{Scheduler: "wrr"},
		},
		Destinations: reals,
	}}
	actual, err := c.Table(ctx)
	if err != nil {
		return err
	}
	ops := ipvs.Diff(desired, actual)
	fmt.Printf("merlin: applying %d ops to the director's IPVS table in one batch\n", len(ops))
	for _, op := range ops {
		fmt.Println("  ", op)
	}
	if err := c.Apply(ctx, ops); err != nil {
		return err
	}

	tally := map[string]int{}
	for i := range conns {
		var conn net.Conn
		if err := client.Do(func() (err error) {
			conn, err = net.DialTimeout("tcp4", fmt.Sprintf("%s:%d", vip, vipPort), 5*time.Second)
			return err
		}); err != nil {
			return fmt.Errorf("connection %d: %w", i, err)
		}
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		who, err := bufio.NewReader(conn).ReadString('\n')
		conn.Close()
		if err != nil {
			return fmt.Errorf("connection %d: %w", i, err)
		}
		tally[strings.TrimSpace(who)]++
	}
	fmt.Printf("\n%d client connections to %s:%d went to:\n", conns, vip, vipPort)
	names := make([]string, 0, len(tally))
	for n := range tally {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Printf("  %-40s %d\n", n, tally[n])
	}
	out, err := director.Command("ipvsadm", "-Ln").CombinedOutput()
	if err != nil {
		return fmt.Errorf("ipvsadm: %w: %s", err, out)
	}
	fmt.Printf("\nThe director's table (ipvsadm -Ln):\n%s", out)
	return nil
}

func serve(ln net.Listener, name string) {
	for {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		fmt.Fprintln(conn, name)
		conn.Close()
	}
}
