// Command healthbench measures merlin's health checks side by side with
// keepalived's (TCP_CHECK and HTTP_GET with the same timers), one after the
// other in the same run: CPU seconds per 1,000 checks, interval jitter p99
// (seen by the target server), and detection time p99 when 100 servers die
// at once. The servers are addresses on a dummy interface in a network
// namespace, all answered by one Go server; a server dies when its address
// is removed (its probes then time out). It needs root, a kernel with IPVS
// (keepalived's checker programs it) and keepalived: run it in the test VM
// with `make bench`.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/merlin-ipvs/merlin/health"
	"github.com/merlin-ipvs/merlin/internal/netns"
	"github.com/vishvananda/netlink"
)

var (
	servers  = flag.Int("servers", 1000, "real servers checked")
	interval = flag.Duration("interval", time.Second, "check interval")
	timeout  = flag.Duration("timeout", time.Second, "check timeout")
	fall     = flag.Int("fall", 3, "consecutive failures to go down")
	kill     = flag.Int("kill", 100, "servers killed at once")
	measure  = flag.Duration("measure", 20*time.Second, "CPU and jitter measuring window")
	child    = flag.String("monitor", "", "internal: run merlin's monitor for this kind (tcp or http)")
	profile  = flag.String("cpuprofile", "", "write a CPU profile of merlin's checker (first 20 s) to this file")
	rounds   = flag.Int("rounds", 3, "rounds of all contenders; figures are medians")
	only     = flag.String("only", "", "run only this contender (merlin or keepalived) and this check kind (tcp or http), e.g. merlin/tcp; for profiling")
)

func main() {
	flag.Parse()
	if *child != "" {
		runMonitor(health.Kind(*child))
		return
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "healthbench:", err)
		os.Exit(1)
	}
}

func addr(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{198, 18, byte(1 + i/250), byte(1 + i%250)})
}

// runMonitor is merlin's side: the health.Monitor merlin runs, one check per
// server; transitions go to stdout as "down ADDR UNIXNANO".
func runMonitor(kind health.Kind) {
	m := health.NewMonitor(slog.New(slog.NewTextHandler(io.Discard, nil)), printer{})
	want := map[health.Check]bool{}
	for i := range *servers {
		c := health.Check{Kind: kind, Target: netip.AddrPortFrom(addr(i), 80), Interval: *interval, Timeout: *timeout, Rise: 1, Fall: *fall}
		if kind == health.HTTP {
			c.Probe = health.ProbeOf(health.ProbeSpec{Path: "/health", ExpectStatus: "200"})
		}
		want[c] = true
	}
	m.Set(want)
	if *profile != "" {
		f, err := os.Create(*profile)
		if err == nil && pprof.StartCPUProfile(f) == nil {
			time.Sleep(20 * time.Second)
			pprof.StopCPUProfile()
			f.Close()
		}
	}
	select {}
}

type printer struct{}

var out = struct {
	sync.Mutex
	w *bufio.Writer
}{w: bufio.NewWriter(os.Stdout)}

func (printer) Probed(health.Check, time.Duration, error) {}
func (printer) Transition(c health.Check, up bool) {
	if up {
		return
	}
	out.Lock()
	fmt.Fprintf(out.w, "down %s %d\n", c.Target.Addr(), time.Now().UnixNano())
	out.w.Flush()
	out.Unlock()
}

// target is the one server answering every address; it records when each
// address was last probed, for the interval jitter.
type target struct {
	mu      sync.Mutex
	last    map[netip.Addr]time.Time
	jitter  []time.Duration
	count   int
	measure bool
}

func (t *target) hit(local net.Addr) {
	ap, err := netip.ParseAddrPort(local.String())
	if err != nil {
		return
	}
	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.measure {
		t.count++
		if prev, ok := t.last[ap.Addr()]; ok {
			d := now.Sub(prev) - *interval
			if d < 0 {
				d = -d
			}
			t.jitter = append(t.jitter, d)
		}
	}
	t.last[ap.Addr()] = now
}

func (t *target) startMeasuring() {
	t.mu.Lock()
	t.measure, t.count, t.jitter, t.last = true, 0, nil, map[netip.Addr]time.Time{}
	t.mu.Unlock()
}

func (t *target) stopMeasuring() (int, []time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.measure = false
	return t.count, t.jitter
}

type result struct {
	name           string
	cpuPer1000     float64
	vmCPUPer1000   float64 // every process and interrupt in the VM, the target server included
	jitterP99      time.Duration
	detectP99      time.Duration
	checksInWindow int
}

func sh(name string, args ...string) error {
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, out)
	}
	return nil
}

func run() error {
	if err := sh("ip", "link", "set", "lo", "up"); err != nil {
		return err
	}
	tns, err := netns.New("targets-")
	if err != nil {
		return err
	}
	defer tns.Delete()
	// The targets: every address on a dummy interface behind a veth.
	batch := []string{"link add t0 type dummy", "link set t0 up", "link set lo up"}
	for i := range *servers {
		batch = append(batch, fmt.Sprintf("addr add %s/32 dev t0", addr(i)))
	}
	if err := ipBatch(tns, batch); err != nil {
		return err
	}
	tgt := &target{last: map[netip.Addr]time.Time{}}
	var ln net.Listener
	if err := tns.Do(func() (err error) { ln, err = net.Listen("tcp4", ":80"); return err }); err != nil {
		return err
	}
	defer ln.Close()
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") }),
		ConnState: func(c net.Conn, s http.ConnState) {
			if s == http.StateNew {
				tgt.hit(c.LocalAddr())
			}
		},
		ReadHeaderTimeout: 5 * time.Second,
	}
	go func() { _ = srv.Serve(ln) }()

	// Rounds run every contender in turn, keepalived first in odd rounds and
	// merlin first in even ones; each figure is the median over the rounds.
	runs := map[string][]result{}
	for round := range *rounds {
		for _, kind := range []health.Kind{health.TCP, health.HTTP} {
			order := []string{"keepalived", "merlin"}
			if round%2 == 1 {
				order = []string{"merlin", "keepalived"}
			}
			for _, contender := range order {
				if *only != "" && *only != contender+"/"+string(kind) {
					continue
				}
				waitIdle() // the previous contender's namespace teardown runs in kernel workers
				r, err := runContender(contender, kind, tns, tgt)
				if err != nil {
					return fmt.Errorf("%s %s: %w", contender, kind, err)
				}
				runs[contender+"/"+string(kind)] = append(runs[contender+"/"+string(kind)], r)
				fmt.Printf("round %d  %-10s %-4s  %.3f CPU s per 1,000 checks (whole VM %.3f; %d checks in %s)  jitter p99 %s  detection p99 %s\n",
					round+1, contender, kind, r.cpuPer1000, r.vmCPUPer1000, r.checksInWindow, *measure, r.jitterP99.Round(time.Millisecond), r.detectP99.Round(time.Millisecond))
			}
		}
	}
	var results []result
	for _, kind := range []health.Kind{health.TCP, health.HTTP} {
		for _, contender := range []string{"keepalived", "merlin"} {
			if rs := runs[contender+"/"+string(kind)]; len(rs) > 0 {
				results = append(results, medianResult(rs))
			}
		}
	}
	bound := time.Duration(*fall)**interval + *timeout
	if *only != "" {
		return nil
	}
	fmt.Printf("\nmedians of %d rounds; %d servers, interval %s, timeout %s, fall %d, %d killed at once; bound fall × interval + timeout = %s\n\n", *rounds, *servers, *interval, *timeout, *fall, *kill, bound)
	fmt.Println("| check | contender | checker CPU s / 1,000 checks | whole-VM CPU s / 1,000 checks | interval jitter p99 | detection p99 | merlin/keepalived checker CPU | merlin/keepalived VM CPU | detection / bound |")
	fmt.Println("|---|---|---:|---:|---:|---:|---:|---:|---:|")
	for i := 0; i < len(results); i += 2 {
		ka, me := results[i], results[i+1]
		kind := []string{"TCP", "HTTP"}[i/2]
		fmt.Printf("| %s | keepalived | %.3f | %.3f | %s | %s | | | %.2f |\n", kind, ka.cpuPer1000, ka.vmCPUPer1000, ka.jitterP99.Round(time.Millisecond), ka.detectP99.Round(time.Millisecond), float64(ka.detectP99)/float64(bound))
		fmt.Printf("| %s | merlin | %.3f | %.3f | %s | %s | **%.2f** | **%.2f** | **%.2f** |\n", kind, me.cpuPer1000, me.vmCPUPer1000, me.jitterP99.Round(time.Millisecond), me.detectP99.Round(time.Millisecond), me.cpuPer1000/ka.cpuPer1000, me.vmCPUPer1000/ka.vmCPUPer1000, float64(me.detectP99)/float64(bound))
	}
	return nil
}

func ipBatch(ns *netns.NS, lines []string) error {
	cmd := ns.Command("ip", "-batch", "-")
	cmd.Stdin = strings.NewReader(strings.Join(lines, "\n") + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("ip -batch: %w: %s", err, out)
	}
	return nil
}

// runContender checks every server from a fresh namespace, measures CPU
// and jitter, then kills servers and measures detection.
func runContender(name string, kind health.Kind, tns *netns.NS, tgt *target) (result, error) {
	r := result{name: name}
	cns, err := netns.New("checker-")
	if err != nil {
		return r, err
	}
	defer cns.Delete()
	if err := sh("ip", "link", "add", "c0", "netns", cns.Name, "type", "veth", "peer", "name", "t1", "netns", tns.Name); err != nil {
		return r, err
	}
	if err := ipBatch(cns, []string{"addr add 198.18.0.1/24 dev c0", "link set c0 up", "route add 198.18.0.0/16 via 198.18.0.2"}); err != nil {
		return r, err
	}
	if err := ipBatch(tns, []string{"addr add 198.18.0.2/24 dev t1", "link set t1 up"}); err != nil {
		return r, err
	}
	defer func() { _ = ipBatch(tns, []string{"link del t1"}) }()

	dir, err := os.MkdirTemp("/var/tmp", "healthbench-")
	if err != nil {
		return r, err
	}
	defer os.RemoveAll(dir)
	var cmd *exec.Cmd
	var pidOf func() int
	downs := map[netip.Addr]time.Time{}
	var downsMu sync.Mutex
	switch name {
	case "keepalived":
		conf := filepath.Join(dir, "keepalived.conf")
		if err := os.WriteFile(conf, []byte(keepalivedConf(kind)), 0o644); err != nil {
			return r, err
		}
		cpid := filepath.Join(dir, "checkers.pid")
		cmd = cns.Command("keepalived", "--dont-fork", "--log-console", "--check", "-f", conf,
			"--pid", filepath.Join(dir, "k.pid"), "--checkers_pid", cpid)
		pidOf = func() int {
			b, _ := os.ReadFile(cpid)
			p, _ := strconv.Atoi(strings.TrimSpace(string(b)))
			return p
		}
	default:
		exe, _ := os.Executable()
		cmd = cns.Command(exe, "-monitor", string(kind), "-servers", strconv.Itoa(*servers), "-interval", interval.String(),
			"-timeout", timeout.String(), "-fall", strconv.Itoa(*fall), "-cpuprofile", *profile)
		pidOf = func() int { return cmd.Process.Pid } // ip netns exec execs the program itself
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			return r, err
		}
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				f := strings.Fields(sc.Text())
				if len(f) == 3 && f[0] == "down" {
					a, _ := netip.ParseAddr(f[1])
					ns, _ := strconv.ParseInt(f[2], 10, 64)
					downsMu.Lock()
					downs[a] = time.Unix(0, ns)
					downsMu.Unlock()
				}
			}
		}()
	}
	if name == "keepalived" {
		logf, _ := os.Create(filepath.Join(dir, "keepalived.log"))
		defer logf.Close()
		cmd.Stdout, cmd.Stderr = logf, logf
	}
	if err := cmd.Start(); err != nil {
		return r, err
	}
	defer func() {
		// keepalived's checker is a child process: stop the parent
		// gracefully (it stops its children) and kill the checker too, so
		// that no checker outlives its round and loads the next ones.
		checker := pidOf()
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if checker > 0 && checker != cmd.Process.Pid {
			_ = syscall.Kill(checker, syscall.SIGKILL)
		}
	}()
	time.Sleep(3**interval + 2*time.Second) // warm up: every check has run
	pid := pidOf()
	if pid == 0 {
		return r, fmt.Errorf("no checker process")
	}
	cpu0, err := cpuTime(pid)
	if err != nil {
		return r, err
	}
	vm0, err := vmBusy()
	if err != nil {
		return r, err
	}
	tgt.startMeasuring()
	time.Sleep(*measure)
	count, jitter := tgt.stopMeasuring()
	cpu1, _ := cpuTime(pid)
	vm1, _ := vmBusy()
	r.checksInWindow = count
	if count > 0 {
		r.cpuPer1000 = (cpu1 - cpu0).Seconds() / float64(count) * 1000
		r.vmCPUPer1000 = (vm1 - vm0).Seconds() / float64(count) * 1000
	}
	r.jitterP99 = pct(jitter, 99)

	// Kill servers: remove their addresses (in this process, by netlink, so
	// that each server's death is timed when its own address is gone);
	// probes to them then time out.
	killed := map[netip.Addr]bool{}
	var order []netip.Addr
	for i := range *kill {
		a := addr(i * (*servers / *kill))
		killed[a] = true
		order = append(order, a)
	}
	died, err := removeAddrs(tns, order)
	if err != nil {
		return r, err
	}
	t0 := died[order[0]]
	var detect []time.Duration
	deadline := t0.Add(4*(time.Duration(*fall)**interval+*timeout) + 10*time.Second)
	for time.Now().Before(deadline) {
		if name == "keepalived" {
			gone, err := ipvsMissing(cns, killed)
			if err != nil {
				return r, err
			}
			now := time.Now()
			for a := range gone {
				if _, ok := downs[a]; !ok {
					downs[a] = now
				}
			}
		}
		downsMu.Lock()
		n := 0
		for a := range killed {
			if _, ok := downs[a]; ok {
				n++
			}
		}
		downsMu.Unlock()
		if n == len(killed) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	downsMu.Lock()
	for a := range killed {
		if at, ok := downs[a]; ok {
			detect = append(detect, at.Sub(died[a]))
		} else {
			detect = append(detect, time.Since(died[a])) // not detected: counts as the whole wait
		}
	}
	downsMu.Unlock()
	r.detectP99 = pct(detect, 99)
	fmt.Printf("%-10s %-4s  detection min %s p50 %s p90 %s max %s\n", name, kind,
		pct(detect, 1).Round(time.Millisecond), pct(detect, 50).Round(time.Millisecond), pct(detect, 90).Round(time.Millisecond), pct(detect, 100).Round(time.Millisecond))
	// Bring the servers back for the next contender.
	var adds []string
	for a := range killed {
		adds = append(adds, fmt.Sprintf("addr add %s/32 dev t0", a))
	}
	return r, ipBatch(tns, adds)
}

// removeAddrs deletes the addresses from the targets' dummy interface one
// by one and returns when each was gone.
func removeAddrs(ns *netns.NS, addrs []netip.Addr) (map[netip.Addr]time.Time, error) {
	died := map[netip.Addr]time.Time{}
	err := ns.Do(func() error {
		link, err := netlink.LinkByName("t0")
		if err != nil {
			return fmt.Errorf("find t0: %w", err)
		}
		for _, a := range addrs {
			if err := netlink.AddrDel(link, &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(32, 32)}}); err != nil {
				return fmt.Errorf("delete %s: %w", a, err)
			}
			died[a] = time.Now()
		}
		return nil
	})
	return died, err
}

// ipvsMissing lists the killed servers keepalived has taken out of IPVS
// (weight 0 with inhibit_on_failure).
func ipvsMissing(ns *netns.NS, killed map[netip.Addr]bool) (map[netip.Addr]bool, error) {
	out, err := ns.Command("ipvsadm", "-Sn").Output()
	if err != nil {
		return nil, err
	}
	alive := map[netip.Addr]bool{}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) >= 8 && f[0] == "-a" && f[len(f)-1] != "0" {
			if ap, err := netip.ParseAddrPort(f[4]); err == nil {
				alive[ap.Addr()] = true
			}
		}
	}
	gone := map[netip.Addr]bool{}
	for a := range killed {
		if !alive[a] {
			gone[a] = true
		}
	}
	return gone, nil
}

func keepalivedConf(kind health.Kind) string {
	var b strings.Builder
	fmt.Fprintf(&b, "global_defs {\n  router_id bench\n}\n")
	fmt.Fprintf(&b, "virtual_server 198.19.0.1 80 {\n  delay_loop %d\n  lb_algo rr\n  lb_kind DR\n  protocol TCP\n", int(interval.Seconds()))
	for i := range *servers {
		fmt.Fprintf(&b, "  real_server %s 80 {\n    weight 1\n    inhibit_on_failure\n", addr(i))
		switch kind {
		case health.HTTP:
			fmt.Fprintf(&b, "    HTTP_GET {\n      url {\n        path /health\n        status_code 200\n      }\n")
		default:
			fmt.Fprintf(&b, "    TCP_CHECK {\n")
		}
		fmt.Fprintf(&b, "      connect_timeout %d\n      retry %d\n      delay_before_retry %d\n    }\n  }\n", int(timeout.Seconds()), *fall-1, int(interval.Seconds()))
	}
	b.WriteString("}\n")
	return b.String()
}

// medianResult takes each figure's median over rounds.
func medianResult(rs []result) result {
	med := func(f func(result) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		slices.Sort(v)
		if len(v)%2 == 1 {
			return v[len(v)/2]
		}
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return result{
		name:         rs[0].name,
		cpuPer1000:   med(func(r result) float64 { return r.cpuPer1000 }),
		vmCPUPer1000: med(func(r result) float64 { return r.vmCPUPer1000 }),
		jitterP99:    time.Duration(med(func(r result) float64 { return float64(r.jitterP99) })),
		detectP99:    time.Duration(med(func(r result) float64 { return float64(r.detectP99) })),
	}
}

// waitIdle waits (up to a minute) until the VM is below 10% busy over a
// second, so that one contender's leftovers (a network namespace with
// thousands of TIME_WAIT sockets is torn down in a kernel worker) do not
// count against the next.
func waitIdle() {
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		b0, err := vmBusy()
		if err != nil {
			return
		}
		time.Sleep(time.Second)
		b1, _ := vmBusy()
		if b1-b0 < 100*time.Millisecond {
			return
		}
	}
}

// vmBusy is the CPU time the whole machine spent not idle.
func vmBusy() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	var busy int64
	for i, v := range f[1:] {
		n, _ := strconv.ParseInt(v, 10, 64)
		if i != 3 && i != 4 && i < 8 {
			busy += n
		}
	}
	return time.Duration(busy) * time.Second / 100, nil
}

// cpuTime is a process's user+system CPU time.
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100, nil // USER_HZ is 100 on Linux
}

func pct(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[max(0, min(len(s)-1, i-1))]
}
