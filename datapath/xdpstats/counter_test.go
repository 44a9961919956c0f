//go:build linux

package xdpstats_test

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/merlin-ipvs/merlin/datapath/xdpstats"
	"github.com/merlin-ipvs/merlin/internal/testenv"
)

// topology: client ns (c0 198.18.5.2) ── l0 198.18.5.1 [lb ns] l1 198.18.6.1 ── server ns (s0 198.18.6.2)
// The lb namespace routes between the two and holds the VIP 198.18.5.100.
type topology struct {
	client, lb, server *testenv.NetNS
}

var (
	vip       = netip.MustParseAddr("198.18.5.100")
	serverIP  = netip.MustParseAddr("198.18.6.2")
	serverNAT = xdpstats.ServerKey{Method: xdpstats.NAT, Addr: serverIP, Port: 8080, Proto: xdpstats.UDP}
	serverDR  = xdpstats.ServerKey{Method: xdpstats.Route, Addr: serverIP, Port: 9090, Proto: xdpstats.UDP}
	serverTCP = xdpstats.ServerKey{Method: xdpstats.NAT, Addr: serverIP, Port: 8081, Proto: xdpstats.TCP}
	vipUDP    = xdpstats.VIPKey{Addr: vip, Port: 53, Proto: xdpstats.UDP}
	vipTCP    = xdpstats.VIPKey{Addr: vip, Port: 80, Proto: xdpstats.TCP}
)

func newTopology(t *testing.T) *topology {
	t.Helper()
	tp := &topology{client: testenv.NewNetNS(t), lb: testenv.NewNetNS(t), server: testenv.NewNetNS(t)}
	link := func(a *testenv.NetNS, an, aaddr string, b *testenv.NetNS, bn, baddr string) {
		a.Run(t, "ip", "link", "add", an, "type", "veth", "peer", "name", bn, "netns", b.Name)
		a.Run(t, "ip", "addr", "add", aaddr, "dev", an)
		a.Run(t, "ip", "link", "set", an, "up")
		b.Run(t, "ip", "addr", "add", baddr, "dev", bn)
		b.Run(t, "ip", "link", "set", bn, "up")
	}
	link(tp.lb, "l0", "198.18.5.1/24", tp.client, "c0", "198.18.5.2/24")
	link(tp.lb, "l1", "198.18.6.1/24", tp.server, "s0", "198.18.6.2/24")
	tp.lb.Run(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	tp.lb.Run(t, "ip", "addr", "add", vip.String()+"/32", "dev", "lo")
	tp.client.Run(t, "ip", "route", "add", "default", "via", "198.18.5.1")
	tp.server.Run(t, "ip", "route", "add", "default", "via", "198.18.6.1")
	return tp
}

func pinDir(t *testing.T) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	dir := "/sys/fs/bpf/merlin-test-" + hex.EncodeToString(b[:])
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

func config(dir string) xdpstats.Config {
	return xdpstats.Config{XDPInterfaces: []string{"l0"}, TCInterfaces: []string{"l1"}, MaxVIPs: 64, MaxServers: 64, PinDir: dir}
}

// in runs fn in ns, failing the test on error.
func in(t *testing.T, ns *testenv.NetNS, fn func() error) {
	t.Helper()
	if err := ns.Do(fn); err != nil {
		t.Fatal(err)
	}
}

// sendUDP sends n datagrams of size bytes from ns to dst.
func sendUDP(t *testing.T, ns *testenv.NetNS, dst string, n, size int) {
	t.Helper()
	in(t, ns, func() error {
		// Unconnected: an ICMP port unreachable does not fail the next write.
		c, err := net.ListenUDP("udp4", nil)
		if err != nil {
			return err
		}
		defer c.Close()
		to := net.UDPAddrFromAddrPort(netip.MustParseAddrPort(dst))
		buf := make([]byte, size)
		for range n {
			if _, err := c.WriteToUDP(buf, to); err != nil {
				return err
			}
		}
		return nil
	})
}

func openCounter(t *testing.T, tp *topology, cfg xdpstats.Config) *xdpstats.Counter {
	t.Helper()
	testenv.RequireRoot(t)
	c := xdpstats.New(cfg, slog.New(slog.DiscardHandler))
	var err error
	in(t, tp.lb, func() error { err = c.Open(t.Context()); return nil })
	if err != nil {
		testenv.Missing(t, testenv.PrivilegedPromised(), "cannot load and attach eBPF programs: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func set(t *testing.T, tp *topology, c *xdpstats.Counter, keys xdpstats.Keys) {
	t.Helper()
	in(t, tp.lb, func() error { return c.Set(keys) })
}

func read(t *testing.T, c *xdpstats.Counter) xdpstats.Snapshot {
	t.Helper()
	s, err := c.Read()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// waitFor polls until cond holds for the snapshot (packets on veth arrive
// asynchronously).
func waitFor(t *testing.T, c *xdpstats.Counter, what string, cond func(xdpstats.Snapshot) bool) xdpstats.Snapshot {
	t.Helper()
	var s xdpstats.Snapshot
	testenv.Eventually(t, what, func() bool {
		s = read(t, c)
		return cond(s)
	})
	return s
}

func TestCountsExact(t *testing.T) {
	tp := newTopology(t)
	dir := pinDir(t)
	c := openCounter(t, tp, config(dir))
	st := c.Status()
	if !st.On || len(st.Attached) != 3 {
		t.Fatalf("status %+v: want on, XDP on l0 and TC both ways on l1", st)
	}
	// The server's MAC is in the neighbour table once the node talked to it.
	// The direct-routing server is keyed by MAC: merlin asks the kernel to
	// resolve it, and a later Set (Run's refresh) keys it.
	keys := xdpstats.Keys{VIPs: []xdpstats.VIPKey{vipUDP, vipTCP}, Servers: []xdpstats.ServerKey{serverNAT, serverDR, serverTCP}}
	set(t, tp, c, keys)
	testenv.Eventually(t, "the direct-routing server's MAC resolved", func() bool {
		set(t, tp, c, keys)
		return c.Status().Unresolved == 0
	})
	if st := c.Status(); st.Unresolved != 0 || st.Keys != 7 {
		t.Fatalf("status %+v: want 7 keys (2 VIPs, 3 servers forwarded to, 2 NAT servers replying), none unresolved", st)
	}

	sendUDP(t, tp.client, "198.18.5.100:53", 50, 100) // to a service
	sendUDP(t, tp.client, "198.18.5.100:9999", 7, 10) // to the VIP, no service
	sendUDP(t, tp.client, "198.18.6.2:8080", 20, 200) // forwarded to the NAT server
	sendUDP(t, tp.client, "198.18.6.2:9090", 5, 300)  // forwarded, known by MAC only
	sendUDP(t, tp.lb, "198.18.6.2:8080", 11, 50)      // the node's own: not forwarded
	sendUDP(t, tp.client, "198.18.6.2:7777", 3, 10)   // no key: not counted
	s := waitFor(t, c, "all packets counted", func(s xdpstats.Snapshot) bool {
		return s.VIPs[vipUDP].Packets >= 50 && s.Unmatched[vip].Packets >= 7 && s.Forwarded[serverNAT].Packets >= 20 && s.Forwarded[serverDR].Packets >= 5
	})
	if got, want := s.VIPs[vipUDP], (xdpstats.Counters{Packets: 50, Bytes: 50 * (20 + 8 + 100)}); got != want {
		t.Errorf("VIP %s: %+v, want %+v", vipUDP, got, want)
	}
	if got, want := s.Unmatched[vip], (xdpstats.Counters{Packets: 7, Bytes: 7 * (20 + 8 + 10)}); got != want {
		t.Errorf("unmatched %s: %+v, want %+v", vip, got, want)
	}
	if got, want := s.Forwarded[serverNAT], (xdpstats.Counters{Packets: 20, Bytes: 20 * (20 + 8 + 200)}); got != want {
		t.Errorf("forwarded %s: %+v, want %+v (the node's own packets must not count)", serverNAT, got, want)
	}
	if got, want := s.Forwarded[serverDR], (xdpstats.Counters{Packets: 5, Bytes: 5 * (20 + 8 + 300)}); got != want {
		t.Errorf("forwarded %s: %+v, want %+v", serverDR, got, want)
	}
	checkReadEachForwarded(t, c, s.Forwarded)

	// TCP: a client's SYN to the VIP, and a connection through the node to
	// a server that refuses (RST) and one that answers (SYN-ACK).
	in(t, tp.client, func() error {
		if c, err := net.DialTimeout("tcp4", "198.18.5.100:80", 2*time.Second); err == nil {
			c.Close()
		}
		if c, err := net.DialTimeout("tcp4", "198.18.6.2:8081", 2*time.Second); err == nil {
			c.Close()
		}
		return nil
	})
	s = waitFor(t, c, "TCP counted", func(s xdpstats.Snapshot) bool {
		return s.VIPs[vipTCP].SYN >= 1 && s.Replies[serverTCP].RST >= 1
	})
	if v := s.VIPs[vipTCP]; v.SYN != 1 || v.Packets != 1 {
		t.Errorf("VIP %s: %+v, want one SYN", vipTCP, v)
	}
	if f, r := s.Forwarded[serverTCP], s.Replies[serverTCP]; f.SYN != 1 || r.RST != 1 || r.SYNACK != 0 {
		t.Errorf("refusing server: forwarded %+v replies %+v: want 1 SYN forwarded, 1 RST back", f, r)
	}
}

// checkReadEachForwarded reads only the forwarded role, as a metrics read
// choosing no other does: each key once, the same counters as Read's.
func checkReadEachForwarded(t *testing.T, c *xdpstats.Counter, want map[xdpstats.ServerKey]xdpstats.Counters) {
	t.Helper()
	got := map[xdpstats.ServerKey]xdpstats.Counters{}
	err := c.ReadEach(xdpstats.Visit{Forwarded: func(k xdpstats.ServerKey, v xdpstats.Counters) {
		if _, dup := got[k]; dup {
			t.Errorf("ReadEach handed %s twice", k.Addr)
		}
		got[k] = v
	}})
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(got, want) {
		t.Errorf("ReadEach forwarded %+v, want Read's %+v", got, want)
	}
}

func TestKeysFollowSet(t *testing.T) {
	tp := newTopology(t)
	first := pinDir(t)
	c := openCounter(t, tp, config(first))
	set(t, tp, c, xdpstats.Keys{VIPs: []xdpstats.VIPKey{vipUDP, vipTCP}, Servers: []xdpstats.ServerKey{serverNAT}})
	set(t, tp, c, xdpstats.Keys{VIPs: []xdpstats.VIPKey{vipTCP}})
	s := read(t, c)
	if _, ok := s.VIPs[vipUDP]; ok || len(s.VIPs) != 1 || len(s.Forwarded) != 0 || len(s.Replies) != 0 {
		t.Fatalf("after removing keys: %+v", s)
	}
	// A map that is full: the keys that fit count, the rest are reported.
	_ = c.Close()
	in(t, tp.lb, func() error { return xdpstats.Remove(first) })
	cfg := config(pinDir(t))
	cfg.MaxVIPs = 2
	small := openCounter(t, tp, cfg)
	var err error
	in(t, tp.lb, func() error {
		err = small.Set(xdpstats.Keys{VIPs: []xdpstats.VIPKey{vipUDP, vipTCP, {Addr: vip, Port: 443, Proto: xdpstats.TCP}}})
		return nil
	})
	if err == nil || !strings.Contains(err.Error(), "did not fit") || small.Status().Dropped != 1 {
		t.Fatalf("over the map size: error %v, status %+v; want 1 dropped, reported", err, small.Status())
	}
}

func TestRestartKeepsCounting(t *testing.T) {
	tp := newTopology(t)
	dir := pinDir(t)
	c := openCounter(t, tp, config(dir))
	set(t, tp, c, xdpstats.Keys{VIPs: []xdpstats.VIPKey{vipUDP}})
	sendUDP(t, tp.client, "198.18.5.100:53", 10, 1)
	waitFor(t, c, "first packets", func(s xdpstats.Snapshot) bool { return s.VIPs[vipUDP].Packets == 10 })
	_ = c.Close()
	// Counting goes on while no merlin runs: the links are pinned.
	sendUDP(t, tp.client, "198.18.5.100:53", 5, 1)
	c2 := openCounter(t, tp, config(dir))
	set(t, tp, c2, xdpstats.Keys{VIPs: []xdpstats.VIPKey{vipUDP}})
	sendUDP(t, tp.client, "198.18.5.100:53", 5, 1)
	waitFor(t, c2, "counts kept over the restart", func(s xdpstats.Snapshot) bool { return s.VIPs[vipUDP].Packets == 20 })

	// Remove detaches and unpins everything.
	_ = c2.Close()
	in(t, tp.lb, func() error { return xdpstats.Remove(dir) })
	in(t, tp.lb, func() error {
		l, err := netlink.LinkByName("l0")
		if err != nil {
			return err
		}
		if x := l.Attrs().Xdp; x != nil && x.Attached {
			return fmt.Errorf("XDP still attached after Remove")
		}
		return nil
	})
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("pin dir after Remove: %v", err)
	}
}

func TestForeignXDPLeftAlone(t *testing.T) {
	tp := newTopology(t)
	testenv.RequireRoot(t)
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, License: "GPL", Instructions: asm.Instructions{
		asm.Mov.Imm(asm.R0, 2), asm.Return(), // XDP_PASS
	}})
	if err != nil {
		testenv.Missing(t, testenv.PrivilegedPromised(), "cannot load an XDP program: %v", err)
	}
	defer prog.Close()
	in(t, tp.lb, func() error {
		l, err := netlink.LinkByName("l0")
		if err != nil {
			return err
		}
		return netlink.LinkSetXdpFdWithFlags(l, prog.FD(), 2) // generic
	})
	c := xdpstats.New(config(pinDir(t)), slog.New(slog.DiscardHandler))
	in(t, tp.lb, func() error { err = c.Open(t.Context()); return nil })
	if err == nil || !strings.Contains(err.Error(), "did not attach") {
		t.Fatalf("Open with a foreign XDP program: %v", err)
	}
	if st := c.Status(); st.On || !strings.Contains(st.Reason, "did not attach") {
		t.Fatalf("status %+v: want off with the reason", st)
	}
	info, _ := prog.Info()
	id, _ := info.ID()
	in(t, tp.lb, func() error {
		l, err := netlink.LinkByName("l0")
		if err != nil {
			return err
		}
		if x := l.Attrs().Xdp; x == nil || x.ProgId != uint32(id) {
			return fmt.Errorf("the foreign program was replaced: %+v", x)
		}
		// Nothing of merlin's stayed attached on the TC side either.
		filters, _ := netlink.FilterList(l, netlink.HANDLE_MIN_EGRESS)
		if len(filters) != 0 {
			return fmt.Errorf("filters left: %v", filters)
		}
		return nil
	})
}

// Without the privileges BPF needs, Open fails with the reason, leaves
// nothing attached, and the Counter stays usable as "off".
func TestMissingPrivilegeIsReported(t *testing.T) {
	tp := newTopology(t)
	c := xdpstats.New(config(pinDir(t)), slog.New(slog.DiscardHandler))
	var err error
	in(t, tp.lb, func() error {
		// Capabilities are per thread: drop the effective ones of this
		// (locked) thread only, and take them back after.
		var hdr = unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			return err
		}
		saved := data
		data[0].Effective, data[1].Effective = 0, 0
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			return err
		}
		err = c.Open(t.Context())
		return unix.Capset(&hdr, &saved[0])
	})
	if err == nil {
		t.Fatal("Open without privileges succeeded")
	}
	if st := c.Status(); st.On || st.Reason == "" {
		t.Fatalf("status %+v: want off with the reason", st)
	}
	if err := c.Set(xdpstats.Keys{VIPs: []xdpstats.VIPKey{vipUDP}}); !errors.Is(err, xdpstats.ErrNotOpen) {
		t.Fatalf("Set on counters that are off: %v", err)
	}
	if _, err := c.Read(); !errors.Is(err, xdpstats.ErrNotOpen) {
		t.Fatalf("Read on counters that are off: %v", err)
	}
	in(t, tp.lb, func() error {
		l, err := netlink.LinkByName("l0")
		if err != nil {
			return err
		}
		if x := l.Attrs().Xdp; x != nil && x.Attached {
			return fmt.Errorf("an XDP program is attached after a failed Open")
		}
		return nil
	})
	t.Logf("reason: %s", c.Status().Reason)
}

// Resync puts back a planned key another program deleted and deletes the
// one it added, keeping the counts of the keys in place; and Sets made
// while Resyncs and Reads run (neither holds the lock through its walk of
// the maps) all stand at the end.
func TestResyncRepairsKeys(t *testing.T) {
	tp := newTopology(t)
	dir := pinDir(t)
	c := openCounter(t, tp, config(dir))
	set(t, tp, c, xdpstats.Keys{VIPs: []xdpstats.VIPKey{vipUDP, vipTCP}})
	sendUDP(t, tp.client, "198.18.5.100:53", 5, 100)
	waitFor(t, c, "5 datagrams at the VIP", func(s xdpstats.Snapshot) bool { return s.VIPs[vipUDP].Packets == 5 })

	vips4, err := ebpf.LoadPinnedMap(dir+"/maps/vips4", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer vips4.Close()
	var udpKey, tcpKey []byte
	iter := vips4.Iterate()
	var k []byte
	var v [][]byte
	for iter.Next(&k, &v) {
		if slices.Contains(k, byte(unix.IPPROTO_TCP)) {
			tcpKey = slices.Clone(k)
		} else {
			udpKey = slices.Clone(k)
		}
	}
	if err := iter.Err(); err != nil || udpKey == nil || tcpKey == nil {
		t.Fatalf("keys of vips4: %x %x, %v", udpKey, tcpKey, err)
	}
	stray := slices.Clone(udpKey)
	stray[0] ^= 0xff // another address
	if err := vips4.Delete(tcpKey); err != nil {
		t.Fatal(err)
	}
	if err := vips4.Update(stray, v, ebpf.UpdateNoExist); err != nil {
		t.Fatal(err)
	}
	in(t, tp.lb, func() error { c.Resync(); return nil })
	s := read(t, c)
	if _, ok := s.VIPs[vipTCP]; !ok || len(s.VIPs) != 2 || s.VIPs[vipUDP].Packets != 5 {
		t.Fatalf("after Resync: %+v; want the two planned VIPs, 5 packets at %v", s.VIPs, vipUDP)
	}

	setsUnderResyncs(t, tp, c)
}

// setsUnderResyncs makes 200 Sets while Resyncs and Reads run, and checks
// that the maps hold the last plan's keys.
func setsUnderResyncs(t *testing.T, tp *topology, c *xdpstats.Counter) {
	stop := make(chan struct{})
	resyncs := make(chan int)
	go func() {
		n := 0
		for {
			select {
			case <-stop:
				resyncs <- n
				return
			default:
			}
			_ = tp.lb.Do(func() error { c.Resync(); return nil })
			if _, err := c.Read(); err != nil {
				t.Error(err)
			}
			n++
		}
	}()
	plans := []xdpstats.Keys{
		{VIPs: []xdpstats.VIPKey{vipUDP}, Servers: []xdpstats.ServerKey{serverNAT, serverTCP}},
		{VIPs: []xdpstats.VIPKey{vipTCP}, Servers: []xdpstats.ServerKey{serverTCP}},
	}
	for i := range 200 {
		set(t, tp, c, plans[i%2])
	}
	close(stop)
	t.Logf("%d resyncs during 200 sets", <-resyncs)
	s := read(t, c)
	if _, ok := s.VIPs[vipTCP]; !ok || len(s.VIPs) != 1 || len(s.Forwarded) != 1 || len(s.Replies) != 1 {
		t.Fatalf("after Sets with Resyncs under way: %+v; want the last plan's keys", s)
	}
}
