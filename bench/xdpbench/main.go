// Command xdpbench measures the per-packet cost of merlin's counter programs
// against a bare program and against xdp-tools' xdp-filter (Debian's
// xdp-tools, its own object file and lookup) in the same run: by
// BPF_PROG_TEST_RUN with repeat, and by live traffic over a veth pair with
// the kernel's own BPF run-time statistics. It needs root and a kernel with
// BPF; it runs on the host (no IPVS needed).
package main

import (
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/merlin-ipvs/merlin/datapath/xdpstats"
	"github.com/merlin-ipvs/merlin/internal/netns"
)

// xdp-filter's programs for the allow policy: all features (its default)
// and IP addresses only.
var xdpFilterObjects = map[string]string{
	"all": "/usr/lib/x86_64-linux-gnu/bpf/xdpfilt_alw_all.o",
	"ip":  "/usr/lib/x86_64-linux-gnu/bpf/xdpfilt_alw_ip.o",
}

var (
	vip     = netip.MustParseAddr("198.18.0.1")
	vipPort = uint16(53)
)

func main() {
	repeat := flag.Int("repeat", 1_000_000, "test runs per measurement")
	rounds := flag.Int("rounds", 5, "rounds (the median is reported)")
	packets := flag.Int("packets", 200_000, "live packets per measurement")
	flag.Parse()
	if err := run(*repeat, *rounds, *packets); err != nil {
		fmt.Fprintln(os.Stderr, "xdpbench:", err)
		os.Exit(1)
	}
}

// contender is one program to measure.
type contender struct {
	name string
	prog *ebpf.Program
	tc   bool
}

func run(repeat, rounds, packets int) error {
	pkt := udpPacket()
	bareXDP, err := bare(ebpf.XDP, 2) // XDP_PASS
	if err != nil {
		return err
	}
	bareTC, err := bare(ebpf.SchedCLS, -1) // TC_ACT_UNSPEC
	if err != nil {
		return err
	}
	contenders := []contender{{"bare XDP_PASS", bareXDP, false}}
	var closers []func() error
	defer func() {
		for _, c := range closers {
			_ = c()
		}
	}()
	for _, n := range []int{10, 100_000} {
		p, err := merlinPrograms(n)
		if err != nil {
			return err
		}
		closers = append(closers, p.Close)
		contenders = append(contenders, contender{fmt.Sprintf("merlin XDP, %d keys", n), p.XDP, false})
		for _, variant := range []string{"all", "ip"} {
			f, fclose, err := xdpFilter(variant, n)
			if err != nil {
				return err
			}
			closers = append(closers, fclose)
			contenders = append(contenders, contender{fmt.Sprintf("xdp-filter %s, %d keys", variant, n), f, false})
		}
		contenders = append(contenders, contender{fmt.Sprintf("merlin TC, %d keys", n), p.Forwarded, true})
	}
	contenders = append(contenders, contender{"bare TC", bareTC, true})

	testRun := map[string][]float64{}
	for r := range rounds {
		for i := range contenders {
			c := contenders[(i+r)%len(contenders)]
			if c.tc {
				continue
			}
			_, d, err := c.prog.Benchmark(pkt, repeat, nil)
			if err != nil {
				return fmt.Errorf("%s: %w", c.name, err)
			}
			testRun[c.name] = append(testRun[c.name], float64(d.Nanoseconds()))
		}
	}
	live, err := liveRun(contenders, pkt, rounds, packets)
	if err != nil {
		return err
	}
	report(contenders, testRun, live, repeat, rounds, packets)
	return nil
}

func bare(t ebpf.ProgramType, ret int64) (*ebpf.Program, error) {
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: t, License: "GPL", Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, int32(ret)), asm.Return()}})
	if err != nil {
		return nil, fmt.Errorf("load a bare %s program: %w", t, err)
	}
	return p, nil
}

// merlinPrograms loads merlin's programs with n VIP keys and n NAT server
// keys, the measured packet's among them.
func merlinPrograms(n int) (*xdpstats.Programs, error) {
	p, err := xdpstats.LoadPrograms(n, n)
	if err != nil {
		return nil, err
	}
	var keys xdpstats.Keys
	for i := range n {
		a := addrN(i)
		keys.VIPs = append(keys.VIPs, xdpstats.VIPKey{Addr: a, Port: vipPort, Proto: xdpstats.UDP})
		keys.Servers = append(keys.Servers, xdpstats.ServerKey{Method: xdpstats.NAT, Addr: a, Port: vipPort, Proto: xdpstats.UDP})
	}
	if err := p.SetKeys(keys); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

// addrN is the i-th address of 198.18.0.0/15; addrN(0) is the measured one.
func addrN(i int) netip.Addr {
	b := vip.As4()
	v := binary.BigEndian.Uint32(b[:]) + uint32(i)
	binary.BigEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// xdpFilter loads xdp-filter's allow-policy IP program from Debian's
// xdp-tools with n destination addresses in its filter, the measured
// packet's among them (it counts and drops it).
func xdpFilter(variant string, n int) (*ebpf.Program, func() error, error) {
	spec, err := ebpf.LoadCollectionSpec(xdpFilterObjects[variant])
	if err != nil {
		return nil, nil, fmt.Errorf("xdp-filter object (install xdp-tools): %w", err)
	}
	spec.Maps["filter_ipv4"].MaxEntries = uint32(max(n, 10000))
	for _, m := range spec.Maps {
		m.Pinning = ebpf.PinNone // xdp-filter pins its maps; the benchmark's own copy stays private
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		return nil, nil, fmt.Errorf("load xdp-filter: %w", err)
	}
	m := coll.Maps["filter_ipv4"]
	const mapFlagDst = 1 << 1
	vals := make([]uint64, ebpf.MustPossibleCPU())
	for i := range vals {
		vals[i] = mapFlagDst
	}
	for i := range n {
		k := addrN(i).As4()
		if err := m.Put(k, vals); err != nil {
			coll.Close()
			return nil, nil, fmt.Errorf("xdp-filter map: %w", err)
		}
	}
	return coll.Programs["xdpfilt_alw_"+variant], func() error { coll.Close(); return nil }, nil
}

// udpPacket is Ethernet, IPv4 and UDP to the VIP with 18 bytes of payload.
func udpPacket() []byte {
	b := make([]byte, 14+20+8+18)
	copy(b[0:6], []byte{0x02, 0, 0, 0, 0, 2})
	copy(b[6:12], []byte{0x02, 0, 0, 0, 0, 1})
	binary.BigEndian.PutUint16(b[12:], 0x0800)
	ip := b[14:]
	ip[0], ip[8], ip[9] = 0x45, 64, 17
	binary.BigEndian.PutUint16(ip[2:], uint16(len(b)-14))
	copy(ip[12:16], []byte{198, 19, 1, 1})
	v := vip.As4()
	copy(ip[16:20], v[:])
	udp := ip[20:]
	binary.BigEndian.PutUint16(udp[0:], 40000)
	binary.BigEndian.PutUint16(udp[2:], vipPort)
	binary.BigEndian.PutUint16(udp[4:], 8+18)
	return b
}

// liveRun sends UDP packets from tx through fwd (which routes them) to rx,
// with each contender in turn on fwd: XDP on its ingress f0, TC on its
// egress f1 (what IPVS forwards leaves that way). The kernel's BPF
// statistics give the program's own time per packet.
func liveRun(contenders []contender, pkt []byte, rounds, packets int) (map[string][]float64, error) {
	stats, err := ebpf.EnableStats(0) // BPF_STATS_RUN_TIME
	if err != nil {
		return nil, fmt.Errorf("enable BPF statistics: %w", err)
	}
	defer stats.Close()
	var nss []*netns.NS
	defer func() {
		for _, ns := range nss {
			_ = ns.Delete()
		}
	}()
	for _, prefix := range []string{"xdpbench-tx-", "xdpbench-fwd-", "xdpbench-rx-"} {
		ns, err := netns.New(prefix)
		if err != nil {
			return nil, err
		}
		nss = append(nss, ns)
	}
	tx, fwd, rx := nss[0], nss[1], nss[2]
	for _, c := range [][]string{
		{"ip", "link", "add", "t0", "netns", tx.Name, "type", "veth", "peer", "name", "f0", "netns", fwd.Name},
		{"ip", "link", "add", "f1", "netns", fwd.Name, "type", "veth", "peer", "name", "r0", "netns", rx.Name},
		{"ip", "-n", tx.Name, "addr", "add", "198.19.1.1/24", "dev", "t0"},
		{"ip", "-n", tx.Name, "link", "set", "t0", "up"},
		{"ip", "-n", fwd.Name, "link", "set", "f0", "address", "02:00:00:00:00:02"},
		{"ip", "-n", fwd.Name, "addr", "add", "198.19.1.2/24", "dev", "f0"},
		{"ip", "-n", fwd.Name, "link", "set", "f0", "up"},
		{"ip", "-n", fwd.Name, "link", "set", "f1", "up"},
		{"ip", "-n", rx.Name, "link", "set", "r0", "address", "02:00:00:00:00:03"},
		{"ip", "-n", rx.Name, "link", "set", "r0", "up"},
		{"ip", "netns", "exec", fwd.Name, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.f0.rp_filter=0"},
		{"ip", "-n", tx.Name, "route", "add", "198.18.0.0/15", "via", "198.19.1.2"},
		{"ip", "-n", tx.Name, "neigh", "add", "198.19.1.2", "lladdr", "02:00:00:00:00:02", "dev", "t0"},
		{"ip", "-n", fwd.Name, "route", "add", "198.18.0.0/15", "dev", "f1"},
		{"ip", "-n", fwd.Name, "neigh", "add", vip.String(), "lladdr", "02:00:00:00:00:03", "dev", "f1"},
	} {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("%s: %w: %s", strings.Join(c, " "), err, out)
		}
	}
	out := map[string][]float64{}
	for r := range rounds {
		for i := range contenders {
			c := contenders[(i+r)%len(contenders)]
			ns, err := liveOne(c, tx, fwd, pkt, packets)
			if err != nil {
				return nil, fmt.Errorf("%s live: %w", c.name, err)
			}
			out[c.name] = append(out[c.name], ns)
		}
	}
	return out, nil
}

func attach(c contender, fwd *netns.NS) (link.Link, error) {
	var l link.Link
	err := fwd.Do(func() error {
		name := "f0"
		if c.tc {
			name = "f1"
		}
		nl, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		if c.tc {
			l, err = link.AttachTCX(link.TCXOptions{Program: c.prog, Interface: nl.Attrs().Index, Attach: ebpf.AttachTCXEgress})
		} else {
			l, err = link.AttachXDP(link.XDPOptions{Program: c.prog, Interface: nl.Attrs().Index, Flags: link.XDPDriverMode})
		}
		return err
	})
	return l, err
}

func liveOne(c contender, tx, fwd *netns.NS, pkt []byte, packets int) (float64, error) {
	l, err := attach(c, fwd)
	if err != nil {
		return 0, err
	}
	defer l.Close()
	before, err := c.prog.Stats()
	if err != nil {
		return 0, err
	}
	payload := pkt[14+20+8:]
	err = tx.Do(func() error {
		conn, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(vip, vipPort)))
		if err != nil {
			return err
		}
		defer conn.Close()
		for range packets {
			if _, err := conn.Write(payload); err != nil && !strings.Contains(err.Error(), "refused") {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		after, err := c.prog.Stats()
		if err != nil {
			return 0, err
		}
		runs := after.RunCount - before.RunCount
		if runs >= uint64(packets) || time.Now().After(deadline) {
			if runs == 0 {
				return 0, errors.New("the program never ran")
			}
			return float64((after.Runtime - before.Runtime).Nanoseconds()) / float64(runs), nil
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

func report(contenders []contender, testRun, live map[string][]float64, repeat, rounds, packets int) {
	fmt.Printf("per-packet cost, median of %d rounds (test run: %d repeats; live: %d UDP packets over veth, native XDP, kernel BPF stats)\n\n", rounds, repeat, packets)
	fmt.Printf("| %-28s | %13s | %13s |\n|%s|%s|%s|\n", "program", "test run (ns)", "live (ns)", strings.Repeat("-", 30), strings.Repeat("-", 15), strings.Repeat("-", 15))
	for _, c := range contenders {
		tr := "—"
		if !c.tc {
			tr = fmt.Sprintf("%.1f", median(testRun[c.name]))
		}
		fmt.Printf("| %-28s | %13s | %13.1f |\n", c.name, tr, median(live[c.name]))
	}
	added := func(m map[string][]float64, name, base string) float64 { return median(m[name]) - median(m[base]) }
	fmt.Println()
	for _, src := range []struct {
		what string
		m    map[string][]float64
	}{{"test run", testRun}, {"live", live}} {
		m10, m100k := added(src.m, "merlin XDP, 10 keys", "bare XDP_PASS"), added(src.m, "merlin XDP, 100000 keys", "bare XDP_PASS")
		for _, variant := range []string{"all", "ip"} {
			f10, f100k := added(src.m, "xdp-filter "+variant+", 10 keys", "bare XDP_PASS"), added(src.m, "xdp-filter "+variant+", 100000 keys", "bare XDP_PASS")
			fmt.Printf("%s: merlin XDP added cost %.1f / %.1f ns (10 / 100k keys), xdp-filter %s %.1f / %.1f ns: merlin/xdp-filter %.2f / %.2f (goal ≤ 1.0)\n",
				src.what, m10, m100k, variant, f10, f100k, m10/f10, m100k/f100k)
		}
		fmt.Printf("%s: merlin XDP 100k/10 keys %.2f (goal ≤ 1.1)\n", src.what, median(src.m["merlin XDP, 100000 keys"])/median(src.m["merlin XDP, 10 keys"]))
	}
	fmt.Printf("live: merlin TC added cost %.1f / %.1f ns (10 / 100k keys) over a bare TC program (a test run gives every packet a socket, which the program skips as the node's own)\n",
		added(live, "merlin TC, 10 keys", "bare TC"), added(live, "merlin TC, 100000 keys", "bare TC"))
}
