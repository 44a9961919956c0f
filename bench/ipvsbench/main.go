// Command ipvsbench measures programming and reading a large IPVS table
// with merlin's datapath/ipvs side by side with ipvsadm -R / -Sn,
// cloudflare/ipvs and moby/ipvs, in the same kernel and the same run.
//
// Each run of each contender gets a fresh network namespace; runs are
// interleaved and the order rotates, so drift in the machine hits every
// contender alike. It needs root and a kernel with IPVS: run it in the test
// VM with `make bench`.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"

	cfipvs "github.com/cloudflare/ipvs"
	cfnetmask "github.com/cloudflare/ipvs/netmask"
	mobyipvs "github.com/moby/ipvs"

	"github.com/merlin-ipvs/merlin/datapath/ipvs"
	"github.com/merlin-ipvs/merlin/internal/netns"
)

func main() {
	services := flag.Int("services", 10000, "virtual services")
	dests := flag.Int("dests", 10, "real servers per service")
	runs := flag.Int("runs", 3, "runs per contender")
	flag.Parse()
	if err := run(*services, *dests, *runs); err != nil {
		fmt.Fprintln(os.Stderr, "ipvsbench:", err)
		os.Exit(1)
	}
}

type contender struct {
	name string
	fn   func(ns *netns.NS, table []ipvs.VirtualServer) error
}

type sample struct {
	wall time.Duration
	user time.Duration // process user CPU time
}

func run(services, dests, runs int) error {
	table := buildTable(services, dests)
	objects := services * (dests + 1)
	restore := restoreFile(table)
	fmt.Printf("table: %d services x %d real servers = %d objects; %d runs each, interleaved\n", services, dests, objects, runs)

	applies := []contender{
		{"merlin Apply", applyMerlin},
		{"ipvsadm -R", func(ns *netns.NS, _ []ipvs.VirtualServer) error { return applyIpvsadm(ns, restore) }},
		{"cloudflare/ipvs", applyCloudflare},
		{"moby/ipvs", applyMoby},
	}
	reads := []contender{
		{"merlin Table", readMerlin},
		{"ipvsadm -Sn", readIpvsadm},
		{"cloudflare/ipvs", readCloudflare},
	}
	applyTimes := map[string][]sample{}
	readTimes := map[string][]sample{}
	for r := range runs {
		for i := range applies {
			c := applies[(i+r)%len(applies)]
			ns, err := netns.New("ipvsbench-")
			if err != nil {
				return err
			}
			s, err := measure(func() error { return c.fn(ns, table) })
			if err == nil {
				err = verify(ns, objects)
			}
			if err != nil {
				ns.Delete()
				return fmt.Errorf("%s: %w", c.name, err)
			}
			applyTimes[c.name] = append(applyTimes[c.name], s)
			fmt.Printf("run %d: apply %-16s %8.2fs\n", r+1, c.name, s.wall.Seconds())
			if c.name == "merlin Apply" {
				// Read-back of the same table, each reader in turn.
				for j := range reads {
					rc := reads[(j+r)%len(reads)]
					s, err := measure(func() error { return rc.fn(ns, table) })
					if err != nil {
						ns.Delete()
						return fmt.Errorf("%s: %w", rc.name, err)
					}
					readTimes[rc.name] = append(readTimes[rc.name], s)
					fmt.Printf("run %d: read  %-16s %8.2fs\n", r+1, rc.name, s.wall.Seconds())
				}
			}
			if err := ns.Delete(); err != nil {
				return err
			}
		}
	}

	fmt.Printf("\nCold apply of %d objects (median of %d, min-max), ratio = merlin / peer\n", objects, runs)
	report(applyTimes, "merlin Apply", []string{"merlin Apply", "ipvsadm -R", "cloudflare/ipvs", "moby/ipvs"})
	m := median(applyTimes["merlin Apply"])
	fmt.Printf("merlin Apply: user-space CPU %.2fs of %.2fs wall (%.0f%%); the rest is the kernel's own work\n",
		m.user.Seconds(), m.wall.Seconds(), 100*m.user.Seconds()/m.wall.Seconds())
	fmt.Printf("\nFull read-back of %d objects (median of %d, min-max), ratio = merlin / peer\n", objects, runs)
	report(readTimes, "merlin Table", []string{"merlin Table", "ipvsadm -Sn", "cloudflare/ipvs"})
	return nil
}

func measure(fn func() error) (sample, error) {
	var before, after syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &before)
	start := time.Now()
	err := fn()
	wall := time.Since(start)
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &after)
	user := time.Duration(after.Utime.Nano() - before.Utime.Nano())
	return sample{wall: wall, user: user}, err
}

func median(s []sample) sample {
	s = slices.Clone(s)
	slices.SortFunc(s, func(a, b sample) int { return int(a.wall - b.wall) })
	return s[len(s)/2]
}

func report(times map[string][]sample, ours string, order []string) {
	m := median(times[ours]).wall
	fmt.Printf("| %-16s | %9s | %17s | %13s |\n", "contender", "median", "min-max", "merlin/peer")
	fmt.Printf("|%s|%s|%s|%s|\n", strings.Repeat("-", 18), strings.Repeat("-", 11), strings.Repeat("-", 19), strings.Repeat("-", 15))
	for _, name := range order {
		s := times[name]
		if len(s) == 0 {
			continue
		}
		lo := slices.MinFunc(s, func(a, b sample) int { return int(a.wall - b.wall) })
		hi := slices.MaxFunc(s, func(a, b sample) int { return int(a.wall - b.wall) })
		med := median(s).wall
		fmt.Printf("| %-16s | %8.2fs | %7.2fs-%7.2fs | %13.3f |\n", name, med.Seconds(), lo.wall.Seconds(), hi.wall.Seconds(), m.Seconds()/med.Seconds())
	}
}

// buildTable spreads the VIPs over distinct last octets first (the kernel
// hashes services on the low address octet and the port).
func buildTable(services, dests int) []ipvs.VirtualServer {
	tab := make([]ipvs.VirtualServer, services)
	for i := range tab {
		vip := netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})
		tab[i].Service = ipvs.Service{
			Key:    ipvs.ServiceKey{Protocol: ipvs.TCP, Address: vip, Port: 80},
			Config: ipvs.ServiceConfig{Scheduler: "wlc"},
		}
		for j := range dests {
			tab[i].Destinations = append(tab[i].Destinations, ipvs.Destination{
				Key:    ipvs.DestinationKey{Address: netip.AddrFrom4([4]byte{198, 19, byte(j), byte(i)}), Port: uint16(8000 + i>>8)},
				Config: ipvs.DestinationConfig{Weight: 1, Forward: ipvs.DirectRoute},
			})
		}
	}
	return tab
}

func restoreFile(tab []ipvs.VirtualServer) string {
	var b strings.Builder
	for _, vs := range tab {
		k := vs.Service.Key
		vip := netip.AddrPortFrom(k.Address, k.Port)
		fmt.Fprintf(&b, "-A -t %s -s %s\n", vip, vs.Service.Config.Scheduler)
		for _, d := range vs.Destinations {
			fmt.Fprintf(&b, "-a -t %s -r %s -g -w %d\n", vip, netip.AddrPortFrom(d.Key.Address, d.Key.Port), d.Config.Weight)
		}
	}
	return b.String()
}

func verify(ns *netns.NS, objects int) error {
	c, err := ipvs.Open(ipvs.Options{NetNS: ns.FD()})
	if err != nil {
		return err
	}
	defer c.Close()
	tab, err := c.Table(context.Background())
	if err != nil {
		return err
	}
	n := len(tab)
	for _, vs := range tab {
		n += len(vs.Destinations)
	}
	if n != objects {
		return fmt.Errorf("kernel holds %d objects, want %d", n, objects)
	}
	return nil
}

func applyMerlin(ns *netns.NS, table []ipvs.VirtualServer) error {
	c, err := ipvs.Open(ipvs.Options{NetNS: ns.FD()})
	if err != nil {
		return err
	}
	defer c.Close()
	return c.Apply(context.Background(), ipvs.Diff(table, nil))
}

func readMerlin(ns *netns.NS, _ []ipvs.VirtualServer) error {
	c, err := ipvs.Open(ipvs.Options{NetNS: ns.FD()})
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Table(context.Background())
	return err
}

func applyIpvsadm(ns *netns.NS, restore string) error {
	cmd := ns.Command("ipvsadm", "-R")
	cmd.Stdin = strings.NewReader(restore)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("ipvsadm -R: %w: %s", err, out)
	}
	return nil
}

func readIpvsadm(ns *netns.NS, _ []ipvs.VirtualServer) error {
	cmd := ns.Command("ipvsadm", "-Sn")
	cmd.Stdout = io.Discard
	return cmd.Run()
}

func cloudflareClient(ns *netns.NS) (cfipvs.Client, error) {
	var c cfipvs.Client
	err := ns.Do(func() (err error) { c, err = cfipvs.New(); return err })
	return c, err
}

func cfService(k ipvs.ServiceKey) cfipvs.Service {
	return cfipvs.Service{Address: k.Address, Port: k.Port, Family: cfipvs.INET, Protocol: cfipvs.TCP, Scheduler: "wlc", Netmask: cfnetmask.MaskFrom(32, 32)}
}

func applyCloudflare(ns *netns.NS, table []ipvs.VirtualServer) error {
	c, err := cloudflareClient(ns)
	if err != nil {
		return err
	}
	for _, vs := range table {
		svc := cfService(vs.Service.Key)
		if err := c.CreateService(svc); err != nil {
			return fmt.Errorf("create service: %w", err)
		}
		for _, d := range vs.Destinations {
			err := c.CreateDestination(svc, cfipvs.Destination{Address: d.Key.Address, Port: d.Key.Port, Family: cfipvs.INET, FwdMethod: cfipvs.DirectRoute, Weight: d.Config.Weight})
			if err != nil {
				return fmt.Errorf("create destination: %w", err)
			}
		}
	}
	return nil
}

func readCloudflare(ns *netns.NS, _ []ipvs.VirtualServer) error {
	c, err := cloudflareClient(ns)
	if err != nil {
		return err
	}
	svcs, err := c.Services()
	if err != nil {
		return err
	}
	for _, s := range svcs {
		if _, err := c.Destinations(s.Service); err != nil {
			return err
		}
	}
	return nil
}

func applyMoby(ns *netns.NS, table []ipvs.VirtualServer) error {
	h, err := mobyipvs.New(ns.Path())
	if err != nil {
		return err
	}
	defer h.Close()
	for _, vs := range table {
		k := vs.Service.Key
		svc := &mobyipvs.Service{Address: net.IP(k.Address.AsSlice()), Protocol: syscall.IPPROTO_TCP, Port: k.Port,
			SchedName: "wlc", Netmask: 0xffffffff, AddressFamily: syscall.AF_INET}
		if err := h.NewService(svc); err != nil {
			return fmt.Errorf("new service: %w", err)
		}
		for _, d := range vs.Destinations {
			err := h.NewDestination(svc, &mobyipvs.Destination{Address: net.IP(d.Key.Address.AsSlice()), Port: d.Key.Port,
				Weight: int(d.Config.Weight), ConnectionFlags: mobyipvs.ConnectionFlagDirectRoute, AddressFamily: syscall.AF_INET})
			if err != nil {
				return fmt.Errorf("new destination: %w", err)
			}
		}
	}
	return nil
}
