// Command syncbench measures IPVS connection sync as merlin configures it
// (datapath/ipvs SyncDaemon, datapath/netif SyncSysctls) on a real kernel
// (run it in the test VM: bin/vmrun bin/syncbench): the lag from a
// connection established through director A to its entry on director B,
// p50/p99, and A's connections per second with sync and with merlin's
// eBPF counters (XDP + TC) each on against off, in the same run. Needs
// root, IPVS and eBPF.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/merlin-ipvs/merlin/datapath/ipvs"
	"github.com/merlin-ipvs/merlin/datapath/netif"
	"github.com/merlin-ipvs/merlin/datapath/xdpstats"
	"github.com/merlin-ipvs/merlin/internal/netns"
)

const (
	vip     = "198.18.8.1"
	backend = "198.18.7.2"
)

func main() {
	conns := flag.Int("connections", 500, "connections whose sync lag is measured")
	runs := flag.Int("runs", 3, "CPS runs of each setting (sync and counters off and on), interleaved")
	secs := flag.Duration("cps-time", 5*time.Second, "length of one CPS run")
	flag.Parse()
	if err := run(*conns, *runs, *secs); err != nil {
		fmt.Fprintln(os.Stderr, "syncbench:", err)
		os.Exit(1)
	}
}

// lab is client → A → backend, and A — B on the sync link.
type lab struct {
	ctx            context.Context
	a, b, cli, srv *netns.NS
	ca, cb         *ipvs.Client
	counter        *xdpstats.Counter // nil: counters off
}

func run(conns, runs int, cpsTime time.Duration) error {
	l, err := newLab()
	if err != nil {
		return err
	}
	defer l.close()
	stop, err := serve(l.srv)
	if err != nil {
		return err
	}
	defer stop()
	if err := l.syncOn(true); err != nil {
		return err
	}
	lags, err := l.lags(conns)
	if err != nil {
		return err
	}
	fmt.Printf("sync lag (established through A → entry on B), %d connections: p50 %s, p99 %s, max %s\n",
		len(lags), pct(lags, 50), pct(lags, 99), lags[len(lags)-1])
	return l.cps(runs, cpsTime)
}

func newLab() (*lab, error) {
	l := &lab{ctx: context.Background()}
	for _, p := range []**netns.NS{&l.a, &l.b, &l.cli, &l.srv} {
		ns, err := netns.New("syncbench-")
		if err != nil {
			l.close()
			return nil, err
		}
		*p = ns
	}
	links := []struct {
		x, y         *netns.NS
		xName, yName string
		xAddr, yAddr string
		yGateway     string
	}{
		{l.a, l.b, "sync0", "sync0", "198.18.9.1/24", "198.18.9.2/24", ""},
		{l.a, l.cli, "cli0", "eth0", vip + "/24", "198.18.8.2/24", vip},
		{l.a, l.srv, "srv0", "eth0", "198.18.7.1/24", backend + "/24", "198.18.7.1"},
	}
	for _, k := range links {
		if err := veth(k.x, k.y, k.xName, k.yName, k.xAddr, k.yAddr, k.yGateway); err != nil {
			l.close()
			return nil, err
		}
	}
	var err error
	if l.ca, err = director(l.a); err == nil {
		l.cb, err = director(l.b)
	}
	if err != nil {
		l.close()
		return nil, err
	}
	return l, nil
}

// veth joins x and y; y's default route goes via gw when given.
func veth(x, y *netns.NS, xName, yName, xAddr, yAddr, gw string) error {
	tmp := "sb" + strconv.FormatInt(time.Now().UnixNano()%1e6, 10)
	cmds := [][]string{
		{"ip", "link", "add", tmp, "netns", x.Name, "type", "veth", "peer", "name", tmp + "p", "netns", y.Name},
		{"ip", "-n", x.Name, "link", "set", tmp, "name", xName},
		{"ip", "-n", y.Name, "link", "set", tmp + "p", "name", yName},
		{"ip", "-n", x.Name, "addr", "add", xAddr, "dev", xName},
		{"ip", "-n", y.Name, "addr", "add", yAddr, "dev", yName},
		{"ip", "-n", x.Name, "link", "set", xName, "up"},
		{"ip", "-n", y.Name, "link", "set", yName, "up"},
	}
	if gw != "" {
		cmds = append(cmds, []string{"ip", "-n", y.Name, "route", "add", "default", "via", gw})
	}
	for _, c := range cmds {
		if out, err := x.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %w: %s", strings.Join(c, " "), err, out)
		}
	}
	return nil
}

// director: forwarding, the director and sync sysctls, and the NAT service
// vip:80 → backend:8080 (B has it too: synced connections bind to it).
func director(ns *netns.NS) (*ipvs.Client, error) {
	err := ns.Do(func() error {
		vals := map[string]string{"net/ipv4/ip_forward": "1", "net/ipv4/vs/conntrack": "1"}
		for k, v := range netif.SyncSysctls {
			vals[k] = v
		}
		return netif.SetSysctls(vals)
	})
	if err != nil {
		return nil, err
	}
	c, err := ipvs.Open(ipvs.Options{NetNS: ns.FD()})
	if err != nil {
		return nil, err
	}
	key := ipvs.ServiceKey{Family: ipvs.IPv4, Protocol: ipvs.TCP, Address: netip.MustParseAddr(vip), Port: 80}
	table := []ipvs.VirtualServer{{Service: ipvs.Service{Key: key, Config: ipvs.ServiceConfig{Scheduler: "rr"}},
		Destinations: []ipvs.Destination{{Key: ipvs.DestinationKey{Address: netip.MustParseAddr(backend), Port: 8080},
			Config: ipvs.DestinationConfig{Forward: ipvs.Masquerade, Weight: 1}}}}}
	return c, c.Apply(context.Background(), ipvs.Diff(table, nil))
}

func (l *lab) close() {
	_ = l.countersOn(false)
	for _, c := range []*ipvs.Client{l.ca, l.cb} {
		if c != nil {
			c.Close()
		}
	}
	for _, ns := range []*netns.NS{l.a, l.b, l.cli, l.srv} {
		if ns != nil {
			ns.Delete()
		}
	}
}

// syncOn starts A's master and B's backup, or stops them.
func (l *lab) syncOn(on bool) error {
	ctx := context.Background()
	if !on {
		return errors.Join(l.ca.StopSyncDaemon(ctx, ipvs.Master), l.cb.StopSyncDaemon(ctx, ipvs.Backup))
	}
	err := l.ca.StartSyncDaemon(ctx, ipvs.SyncDaemon{Role: ipvs.Master, Interface: "sync0", SyncID: 1})
	if err == nil {
		err = l.cb.StartSyncDaemon(ctx, ipvs.SyncDaemon{Role: ipvs.Backup, Interface: "sync0", SyncID: 1})
	}
	return err
}

// serve accepts on backend:8080 and leaves each connection open until
// the client closes it.
func serve(ns *netns.NS) (func(), error) {
	var ln net.Listener
	err := ns.Do(func() (err error) { ln, err = net.Listen("tcp4", backend+":8080"); return err })
	if err != nil {
		return nil, err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = c.Read(make([]byte, 1)); c.Close() }()
		}
	}()
	return func() { ln.Close() }, nil
}

// lags opens n connections from the client through A, 100 a second, and
// times each until its entry is in B's connection table.
func (l *lab) lags(n int) ([]time.Duration, error) {
	var mu sync.Mutex
	opened, seen := map[uint16]time.Time{}, map[uint16]time.Time{}
	done := make(chan struct{})
	polled := make(chan error, 1)
	go func() { polled <- l.b.Do(func() error { return pollConns(done, &mu, seen) }) }()
	var open []net.Conn
	err := l.cli.Do(func() error {
		for range n {
			c, err := net.DialTimeout("tcp4", vip+":80", 5*time.Second)
			if err != nil {
				return err
			}
			mu.Lock()
			opened[uint16(c.LocalAddr().(*net.TCPAddr).Port)] = time.Now()
			mu.Unlock()
			open = append(open, c)
			time.Sleep(10 * time.Millisecond)
		}
		return nil
	})
	defer func() {
		for _, c := range open {
			c.Close()
		}
	}()
	deadline := time.Now().Add(30 * time.Second)
	for err == nil && time.Now().Before(deadline) {
		mu.Lock()
		all := len(seen) >= len(opened)
		mu.Unlock()
		if all {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	close(done)
	if perr := <-polled; err == nil {
		err = perr
	}
	if err != nil {
		return nil, err
	}
	var out []time.Duration
	for port, t0 := range opened {
		t1, ok := seen[port]
		if !ok {
			return nil, fmt.Errorf("client port %d never reached B within 30 s (%d of %d did)", port, len(seen), len(opened))
		}
		out = append(out, max(0, t1.Sub(t0)))
	}
	slices.Sort(out)
	return out, nil
}

// pollConns reads this thread's namespace's IPVS connection table every
// 5 ms until done, noting when each client port first appears.
func pollConns(done <-chan struct{}, mu *sync.Mutex, seen map[uint16]time.Time) error {
	for {
		select {
		case <-done:
			return nil
		case <-time.After(5 * time.Millisecond):
		}
		raw, err := os.ReadFile("/proc/thread-self/net/ip_vs_conn")
		if err != nil {
			return err
		}
		now := time.Now()
		mu.Lock()
		for _, line := range strings.Split(string(raw), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) < 3 {
				continue
			}
			if p, err := strconv.ParseUint(f[2], 16, 16); err == nil {
				if _, ok := seen[uint16(p)]; !ok {
					seen[uint16(p)] = now
				}
			}
		}
		mu.Unlock()
	}
}

// setting is one CPS configuration of A.
type setting struct{ sync, counters bool }

func (s setting) String() string {
	onOff := map[bool]string{true: "on", false: "off"}
	return fmt.Sprintf("sync %-3s counters %-3s", onOff[s.sync], onOff[s.counters])
}

// cps runs the client's connect-and-close loop through A with sync and the
// eBPF counters each off and on, interleaved in a rotating order, and
// prints the medians and their ratios.
func (l *lab) cps(runs int, d time.Duration) error {
	if err := l.cli.Do(func() error {
		return netif.SetSysctls(map[string]string{"net/ipv4/tcp_tw_reuse": "1", "net/ipv4/ip_local_port_range": "1024 65000"})
	}); err != nil {
		return err
	}
	settings := []setting{{false, false}, {false, true}, {true, false}, {true, true}}
	rates := map[setting][]float64{}
	now := setting{sync: true} // the lag measurement left sync on
	for r := range runs {
		for i := range settings {
			want := settings[(r+i)%len(settings)]
			if err := l.apply(now, want); err != nil {
				return err
			}
			now = want
			rate, err := l.cpsRun(now, d)
			if err != nil {
				return err
			}
			rates[now] = append(rates[now], rate)
			fmt.Printf("run %d: %s %8.0f connections/s\n", r+1, now, rate)
		}
	}
	med := func(s setting) float64 { return median(rates[s]) }
	fmt.Printf("connections per second through A (median of %d):\n", runs)
	for _, s := range settings {
		fmt.Printf("  %s %8.0f\n", s, med(s))
	}
	fmt.Printf("sync on / off (counters off): %.3f (goal ≥ 0.9)\n", med(setting{true, false})/med(setting{false, false}))
	fmt.Printf("counters on / off, sync off: %.3f (goal ≥ 0.95)\n", med(setting{false, true})/med(setting{false, false}))
	fmt.Printf("counters on / off, sync on:  %.3f (goal ≥ 0.95)\n", med(setting{true, true})/med(setting{true, false}))
	return nil
}

// apply switches A from one setting to another.
func (l *lab) apply(from, to setting) error {
	if from.sync != to.sync {
		if err := l.syncOn(to.sync); err != nil {
			return err
		}
	}
	if from.counters != to.counters {
		return l.countersOn(to.counters)
	}
	return nil
}

// cpsRun is one run's connections per second; with the counters on, it
// checks they counted the run's connections.
func (l *lab) cpsRun(s setting, d time.Duration) (float64, error) {
	var xdp0, tc0 uint64
	var err error
	if s.counters {
		if xdp0, tc0, err = l.countedSYNs(); err != nil {
			return 0, err
		}
	}
	n, err := l.connectLoop(d)
	if err != nil {
		return 0, err
	}
	if s.counters {
		xdp, tc, err := l.countedSYNs()
		if err != nil {
			return 0, err
		}
		if xdp-xdp0 < uint64(n) || tc-tc0 < uint64(n) {
			return 0, fmt.Errorf("the counters saw %d SYNs at XDP and %d at TC of %d connections: not in the path", xdp-xdp0, tc-tc0, n)
		}
	}
	return float64(n) / d.Seconds(), nil
}

// connectLoop connects and closes from 4 client goroutines for d.
func (l *lab) connectLoop(d time.Duration) (int64, error) {
	var n atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	end := time.Now().Add(d)
	for range 4 {
		wg.Go(func() {
			errs <- l.cli.Do(func() error {
				for time.Now().Before(end) {
					c, err := net.DialTimeout("tcp4", vip+":80", 5*time.Second)
					if err != nil {
						return err
					}
					c.Close()
					n.Add(1)
				}
				return nil
			})
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return n.Load(), err
		}
	}
	return n.Load(), nil
}

func median(v []float64) float64 {
	slices.Sort(v)
	return v[len(v)/2]
}

func pct(sorted []time.Duration, p int) time.Duration {
	return sorted[min(len(sorted)-1, len(sorted)*p/100)].Round(time.Millisecond)
}
