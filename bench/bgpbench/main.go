// Command bgpbench measures merlin's BGP speaker side by side with gobgpd
// (Debian's, driven through its own gRPC API) in the same run, both peering
// with one bird2 router in a network namespace:
//
//   - bulk: from the moment the speaker is given N routes until bird2 holds
//     all N (polled with birdc), per contender, median of the rounds;
//   - withdraw: with N routes announced, one route withdrawn until it is gone
//     from the router's kernel table (a netlink event in the router's
//     namespace, bird exports with its kernel protocol), p50/p99 over -reps,
//     for a small and a large N.
//
// It needs root and bird2 and gobgpd; run it in the test VM (make bench).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"

	// Debian's gobgpd is 3.x: its gRPC API is v3's (merlin embeds v4).
	api "github.com/osrg/gobgp/v3/api"
	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/merlin-ipvs/merlin/bgp"
	"github.com/merlin-ipvs/merlin/control/node"
	"github.com/merlin-ipvs/merlin/internal/chunklist"
	"github.com/merlin-ipvs/merlin/internal/netns"
)

var (
	large  = flag.Int("large", 10000, "routes of the bulk run and the large withdraw run")
	small  = flag.Int("small", 10, "routes of the small withdraw run")
	reps   = flag.Int("reps", 100, "withdrawals measured per run")
	rounds = flag.Int("rounds", 3, "bulk rounds per contender (interleaved); 0: no bulk run")
)

const (
	merlinAddr, merlinPeer = "198.18.7.1", "198.18.7.2"
	gobgpAddr, gobgpPeer   = "198.18.7.5", "198.18.7.6"
	gobgpAPI               = "127.0.0.1:50071"
)

func main() {
	bgp.RunChildIfAsked() // this program is also merlin's speaker process
	flag.Parse()
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bgpbench:", err)
		os.Exit(1)
	}
}

// prefix i of a contender: merlin's in 198.19.0.0/16, gobgpd's in
// 198.20.0.0/16, so that neither's routes shadow the other's at bird.
func prefix(c contender, i int) netip.Prefix {
	second := byte(19)
	if c.name() == "gobgpd" {
		second = 20
	}
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{198, second, byte(i / 250), byte(1 + i%250)}), 32)
}

// contender is one speaker under test.
type contender interface {
	name() string
	announce(ctx context.Context, n int) error // exactly routes 0..n-1
	prepare(i, n int)                          // before the timed withdraw of route i
	withdraw(ctx context.Context, i, n int) error
	restore(ctx context.Context, i, n int) error
}

func run() error {
	ctx := context.Background()
	dir, err := os.MkdirTemp("/var/tmp", "bgpbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	router, err := netns.New("bgpbench-")
	if err != nil {
		return err
	}
	defer router.Delete()
	for _, l := range []struct{ host, addr, peer string }{{"bb-merlin", merlinAddr, merlinPeer}, {"bb-gobgp", gobgpAddr, gobgpPeer}} {
		_ = exec.Command("ip", "link", "del", l.host).Run() // left by an interrupted run
		if err := link(router, l.host, l.addr, l.peer); err != nil {
			return err
		}
		defer exec.Command("ip", "link", "del", l.host).Run()
	}
	b, err := startBird(router, dir)
	if err != nil {
		return err
	}
	defer b.stop()
	m, err := newMerlin(ctx)
	if err != nil {
		return err
	}
	g, err := startGobgpd(ctx, dir)
	if err != nil {
		return err
	}
	defer g.stop()
	contenders := []contender{m, g}
	for _, c := range contenders {
		if err := b.waitEstablished(c.name(), time.Minute); err != nil {
			return err
		}
	}
	fmt.Printf("bird2 %s, gobgpd %s, merlin's GoBGP %s; %d routes\n\n", b.version(), g.version, embeddedGoBGP(), *large)

	bulk := map[string][]time.Duration{}
	for r := range *rounds {
		for k := range contenders {
			c := contenders[(k+r)%len(contenders)]
			d, err := timeBulk(ctx, b, c, *large)
			if err != nil {
				return fmt.Errorf("%s bulk: %w", c.name(), err)
			}
			bulk[c.name()] = append(bulk[c.name()], d)
		}
	}
	if *rounds > 0 {
		printBulk(contenders, bulk)
	}
	return measureWithdraws(ctx, router, b, contenders)
}

func printBulk(contenders []contender, bulk map[string][]time.Duration) {
	fmt.Println("Bulk: given the set → bird2 holds every route (median; min–max)")
	for _, c := range contenders {
		fmt.Printf("  %-8s %8s  (%s – %s)\n", c.name(), median(bulk[c.name()]).Round(time.Millisecond), slices.Min(bulk[c.name()]).Round(time.Millisecond), slices.Max(bulk[c.name()]).Round(time.Millisecond))
	}
	fmt.Printf("  merlin/gobgpd %.3f (goal ≤ 1.1)\n\n", ratio(median(bulk["merlin"]), median(bulk["gobgpd"])))
}

func measureWithdraws(ctx context.Context, router *netns.NS, b *bird, contenders []contender) error {
	rs, err := newRouteWatch(router)
	if err != nil {
		return err
	}
	defer rs.close()
	fmt.Printf("Withdraw: one route withdrawn → gone from the router's kernel (%d repetitions)\n", *reps)
	p99 := map[string]time.Duration{}
	for _, n := range []int{*small, *large} {
		for _, c := range contenders {
			lat, err := timeWithdraws(ctx, b, rs, c, n)
			if err != nil {
				return fmt.Errorf("%s withdraw with %d: %w", c.name(), n, err)
			}
			slices.Sort(lat)
			q := func(p float64) time.Duration { return lat[int(p*float64(len(lat)-1))].Round(100 * time.Microsecond) }
			fmt.Printf("  %-8s %6d routes: p50 %8s  p99 %8s\n", c.name(), n, q(0.5), q(0.99))
			p99[fmt.Sprint(c.name(), n)] = q(0.99)
		}
	}
	fmt.Printf("  merlin p99 above gobgpd's (bird2's own processing and the peer): %s at %d, %s at %d (goal ≤ 100ms)\n",
		p99[fmt.Sprint("merlin", *small)]-p99[fmt.Sprint("gobgpd", *small)], *small, p99[fmt.Sprint("merlin", *large)]-p99[fmt.Sprint("gobgpd", *large)], *large)
	fmt.Printf("  merlin p99 %d/%d routes: %.2f (goal ≤ 1.2); gobgpd: %.2f\n", *large, *small,
		ratio(p99[fmt.Sprint("merlin", *large)], p99[fmt.Sprint("merlin", *small)]), ratio(p99[fmt.Sprint("gobgpd", *large)], p99[fmt.Sprint("gobgpd", *small)]))
	return nil
}

func ratio(a, b time.Duration) float64 { return float64(a) / float64(b) }

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

func timeBulk(ctx context.Context, b *bird, c contender, n int) (time.Duration, error) {
	start := time.Now()
	if err := c.announce(ctx, n); err != nil {
		return 0, err
	}
	if err := b.waitCount(c.name(), n, 2*time.Minute); err != nil {
		return 0, err
	}
	d := time.Since(start)
	if err := c.announce(ctx, 0); err != nil {
		return 0, err
	}
	return d, b.waitCount(c.name(), 0, 2*time.Minute)
}

func timeWithdraws(ctx context.Context, b *bird, rs *routeWatch, c contender, n int) ([]time.Duration, error) {
	if err := c.announce(ctx, n); err != nil {
		return nil, err
	}
	if err := b.waitCount(c.name(), n, 2*time.Minute); err != nil {
		return nil, err
	}
	if err := rs.waitPresent(prefix(c, n-1), time.Minute); err != nil {
		return nil, err
	}
	out, err := withdrawEach(ctx, rs, c, n)
	if err != nil {
		return nil, err
	}
	if err := c.announce(ctx, 0); err != nil {
		return nil, err
	}
	return out, b.waitCount(c.name(), 0, 2*time.Minute)
}

func withdrawEach(ctx context.Context, rs *routeWatch, c contender, n int) ([]time.Duration, error) {
	var out []time.Duration
	for k := range *reps {
		i := (k * 7919) % n
		p := prefix(c, i)
		if err := rs.drain(); err != nil {
			return nil, err
		}
		c.prepare(i, n)
		start := time.Now()
		if err := c.withdraw(ctx, i, n); err != nil {
			return nil, err
		}
		at, err := rs.waitDeleted(p, 30*time.Second)
		if err != nil {
			return nil, fmt.Errorf("repetition %d: %w", k, err)
		}
		out = append(out, at.Sub(start))
		if err := c.restore(ctx, i, n); err != nil {
			return nil, err
		}
		if err := rs.waitPresent(p, 30*time.Second); err != nil {
			return nil, fmt.Errorf("repetition %d: %w", k, err)
		}
	}
	return out, nil
}

// link makes a veth from here (addr) to the router namespace (peer), /30.
func link(router *netns.NS, host, addr, peer string) error {
	eth := "e" + host
	for _, args := range [][]string{
		{"link", "add", host, "type", "veth", "peer", "name", eth, "netns", router.Name},
		{"addr", "add", addr + "/30", "dev", host}, {"link", "set", host, "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, out)
		}
	}
	for _, args := range [][]string{{"addr", "add", peer + "/30", "dev", eth}, {"link", "set", eth, "up"}, {"link", "set", "lo", "up"}} {
		if out, err := router.Command("ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s in the router: %w: %s", strings.Join(args, " "), err, out)
		}
	}
	return nil
}

// merlin is merlin's node path to its routers: the BGP sink given a node
// plan, the supervised speaker, and the speaker's own process (this
// program again), as a node runs them.
type merlin struct {
	sink    node.Sink
	all     node.NodePlan // every route announced (made once per size)
	pending *node.Plan    // the plan without the route to withdraw
}

func newMerlin(ctx context.Context) (*merlin, error) {
	s, err := bgp.NewSupervised(bgp.Config{LocalAS: 65001, RouterID: netip.MustParseAddr("192.0.2.1"), Peers: []bgp.Peer{{
		Address: netip.MustParseAddr(merlinPeer), AS: 65000, Local: netip.MustParseAddr(merlinAddr), ConnectRetry: time.Second, MaxPrefixes: 10}}},
		slog.New(slog.NewTextHandler(io.Discard, nil)), "")
	if err != nil {
		return nil, err
	}
	go func() { _ = s.Run(ctx) }()
	m := &merlin{sink: node.NewBGPSink(s, 0)}
	return m, m.announce(ctx, 0)
}

func (m *merlin) name() string { return "merlin" }

// served is route i's VIP state, served and announced.
func (m *merlin) served(i int) node.VIPState {
	return node.VIPState{Addr: prefix(m, i).Addr(), State: node.VIPServed, Announce: true}
}

func (m *merlin) announce(ctx context.Context, n int) error {
	vips := make([]node.VIPState, 0, n)
	for i := range n {
		vips = append(vips, m.served(i))
	}
	m.all = node.NodePlan{Ready: true, VIPStates: chunklist.From(vips)}
	return m.sink.Set(ctx, &node.Plan{Node: m.all})
}

// prepare makes the plan without route i as the planner does, splicing
// the one VIP out of the plan before (bench/flatbench measures the
// planner).
func (m *merlin) prepare(i, _ int) {
	addr := prefix(m, i).Addr()
	np := m.all
	np.VIPStates = chunklist.Splice(np.VIPStates, []netip.Addr{addr}, func(v node.VIPState) netip.Addr { return v.Addr }, netip.Addr.Compare,
		func(netip.Addr) []node.VIPState { return nil })
	m.pending = &node.Plan{Node: np, ChangedVIPs: map[netip.Addr]bool{addr: true}}
}

// withdraw gives the sink the plan without route i, as the runner does
// when one VIP's last healthy server goes down.
func (m *merlin) withdraw(ctx context.Context, _, _ int) error { return m.sink.Set(ctx, m.pending) }
func (m *merlin) restore(ctx context.Context, i, _ int) error {
	return m.sink.Set(ctx, &node.Plan{Node: m.all, ChangedVIPs: map[netip.Addr]bool{prefix(m, i).Addr(): true}})
}

// gobgpd is Debian's gobgpd, given routes through its gRPC API.
type gobgpd struct {
	cmd     *exec.Cmd
	conn    *grpc.ClientConn
	c       api.GobgpApiClient
	version string
	n       int // routes announced: 0..n-1
}

func startGobgpd(ctx context.Context, dir string) (*gobgpd, error) {
	conf := filepath.Join(dir, "gobgpd.toml")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(`[global.config]
  as = 65002
  router-id = "192.0.2.2"
  port = -1
[[neighbors]]
  [neighbors.config]
    neighbor-address = "%s"
    peer-as = 65000
  [neighbors.transport.config]
    local-address = "%s"
  [neighbors.timers.config]
    connect-retry = 1
`, gobgpPeer, gobgpAddr)), 0o644); err != nil {
		return nil, err
	}
	out, _ := exec.Command("gobgpd", "--version").CombinedOutput()
	g := &gobgpd{version: strings.TrimSpace(strings.TrimPrefix(string(out), "gobgpd version "))}
	g.cmd = exec.Command("gobgpd", "-f", conf, "--api-hosts", gobgpAPI, "--log-level", "warn")
	if err := g.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start gobgpd: %w", err)
	}
	conn, err := grpc.NewClient(gobgpAPI, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	g.conn, g.c = conn, api.NewGobgpApiClient(conn)
	return g, nil
}

func (g *gobgpd) stop() {
	g.conn.Close()
	_ = g.cmd.Process.Kill()
	_ = g.cmd.Wait()
}

func (g *gobgpd) name() string { return "gobgpd" }

func (g *gobgpd) prepare(int, int) {}

func gobgpPath(i int, withdraw bool) *api.Path {
	p := prefix(&gobgpd{}, i)
	nlri, _ := anypb.New(&api.IPAddressPrefix{Prefix: p.Addr().String(), PrefixLen: 32})
	origin, _ := anypb.New(&api.OriginAttribute{})
	nh, _ := anypb.New(&api.NextHopAttribute{NextHop: "0.0.0.0"})
	return &api.Path{Family: &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}, Nlri: nlri, Pattrs: []*anypb.Any{origin, nh}, IsWithdraw: withdraw}
}

// announce streams the difference to gobgpd (its bulk interface).
func (g *gobgpd) announce(ctx context.Context, n int) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	stream, err := g.c.AddPathStream(ctx)
	if err != nil {
		return fmt.Errorf("gobgpd add path stream: %w", err)
	}
	var paths []*api.Path
	for i := n; i < g.n; i++ {
		paths = append(paths, gobgpPath(i, true))
	}
	for i := g.n; i < n; i++ {
		paths = append(paths, gobgpPath(i, false))
	}
	for len(paths) > 0 {
		k := min(len(paths), 1000)
		if err := stream.Send(&api.AddPathStreamRequest{TableType: api.TableType_GLOBAL, Paths: paths[:k]}); err != nil {
			return fmt.Errorf("gobgpd add path stream: %w", err)
		}
		paths = paths[k:]
	}
	if _, err := stream.CloseAndRecv(); err != nil && err != io.EOF {
		return fmt.Errorf("gobgpd add path stream: %w", err)
	}
	g.n = n
	return nil
}

func (g *gobgpd) withdraw(ctx context.Context, i, _ int) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_, err := g.c.DeletePath(ctx, &api.DeletePathRequest{TableType: api.TableType_GLOBAL, Family: gobgpPath(i, false).Family, Path: gobgpPath(i, false)})
	return err
}

func (g *gobgpd) restore(ctx context.Context, i, _ int) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_, err := g.c.AddPath(ctx, &api.AddPathRequest{TableType: api.TableType_GLOBAL, Path: gobgpPath(i, false)})
	return err
}

// bird is the router.
type bird struct {
	ns   *netns.NS
	cmd  *exec.Cmd
	sock string
}

func startBird(ns *netns.NS, dir string) (*bird, error) {
	conf := filepath.Join(dir, "bird.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(`router id 192.0.2.254;
protocol device {}
protocol kernel { ipv4 { import none; export all; }; }
protocol bgp merlin { local %s as 65000; neighbor %s as 65001; passive on; ipv4 { import all; export none; }; }
protocol bgp gobgpd { local %s as 65000; neighbor %s as 65002; passive on; ipv4 { import all; export none; }; }
`, merlinPeer, merlinAddr, gobgpPeer, gobgpAddr)), 0o644); err != nil {
		return nil, err
	}
	b := &bird{ns: ns, sock: filepath.Join(dir, "bird.ctl")}
	b.cmd = ns.Command("bird", "-f", "-c", conf, "-s", b.sock)
	if err := b.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start bird: %w", err)
	}
	return b, nil
}

func (b *bird) stop() { _ = b.cmd.Process.Kill(); _ = b.cmd.Wait() }

func (b *bird) birdc(args ...string) (string, error) {
	out, err := b.ns.Command("birdc", append([]string{"-s", b.sock}, args...)...).CombinedOutput()
	return string(out), err
}

func (b *bird) version() string {
	out, _ := b.birdc("show", "status")
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 1 && f[0] == "BIRD" {
			return f[1]
		}
	}
	return "?"
}

func (b *bird) waitEstablished(proto string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		out, _ := b.birdc("show", "protocols", proto)
		if strings.Contains(out, "Established") {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("bird's session %s not established: %s", proto, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitCount waits until bird holds exactly n routes from proto.
func (b *bird) waitCount(proto string, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		out, err := b.birdc("show", "route", "count", "protocol", proto)
		if err == nil {
			// "N of N routes for N networks in table master4"
			if f := strings.Fields(lastLine(out)); len(f) > 0 {
				if got, err := strconv.Atoi(f[0]); err == nil && got == n {
					return nil
				}
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("bird does not hold %d routes from %s: %s", n, proto, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// routeWatch follows the router's kernel routes by netlink.
type routeWatch struct {
	ch   chan netlink.RouteUpdate
	done chan struct{}
	h    vnetns.NsHandle
}

func newRouteWatch(ns *netns.NS) (*routeWatch, error) {
	h, err := vnetns.GetFromPath(ns.Path())
	if err != nil {
		return nil, err
	}
	rw := &routeWatch{ch: make(chan netlink.RouteUpdate, 65536), done: make(chan struct{}), h: h}
	// A large receive buffer: bulk runs change thousands of routes at once.
	opts := netlink.RouteSubscribeOptions{Namespace: &h, ReceiveBufferSize: 64 << 20, ReceiveBufferForceSize: true}
	if err := netlink.RouteSubscribeWithOptions(rw.ch, rw.done, opts); err != nil {
		return nil, err
	}
	return rw, nil
}

func (rw *routeWatch) close() { close(rw.done); rw.h.Close() }

// drain drops the events so far; a closed channel (the subscription
// failed, e.g. overrun) is an error.
func (rw *routeWatch) drain() error {
	for {
		select {
		case _, ok := <-rw.ch:
			if !ok {
				return errors.New("route subscription ended (netlink overrun?)")
			}
		default:
			return nil
		}
	}
}

func (rw *routeWatch) waitDeleted(p netip.Prefix, timeout time.Duration) (time.Time, error) {
	return rw.wait(p, false, timeout)
}

func (rw *routeWatch) waitPresent(p netip.Prefix, timeout time.Duration) error {
	h, err := netlink.NewHandleAt(rw.h)
	if err != nil {
		return err
	}
	defer h.Close()
	if rs, err := h.RouteGet(p.Addr().AsSlice()); err == nil && len(rs) > 0 && rs[0].Gw != nil {
		return nil
	}
	_, err = rw.wait(p, true, timeout)
	return err
}

func (rw *routeWatch) wait(p netip.Prefix, added bool, timeout time.Duration) (time.Time, error) {
	want := uint16(0x19) // RTM_DELROUTE 0x19, RTM_NEWROUTE 0x18
	if added {
		want = 0x18
	}
	deadline := time.After(timeout)
	for {
		select {
		case u, ok := <-rw.ch:
			if !ok {
				return time.Time{}, errors.New("route subscription ended (netlink overrun?)")
			}
			if u.Type == want && u.Dst != nil && u.Dst.IP.Equal(net.IP(p.Addr().AsSlice())) {
				return time.Now(), nil
			}
		case <-deadline:
			return time.Time{}, fmt.Errorf("route %s not %s within %s", p, map[bool]string{true: "added", false: "deleted"}[added], timeout)
		}
	}
}

// embeddedGoBGP is the version of GoBGP linked into merlin's speaker.
func embeddedGoBGP() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, m := range bi.Deps {
			if strings.HasPrefix(m.Path, "github.com/osrg/gobgp/v4") {
				return m.Version
			}
		}
	}
	return "(unknown)"
}
