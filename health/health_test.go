package health

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/merlin-ipvs/merlin/internal/testenv"
	"github.com/merlin-ipvs/merlin/internal/testpki"
)

func addrOf(t testing.TB, a net.Addr) netip.AddrPort {
	t.Helper()
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		t.Fatal(err)
	}
	return ap
}

func listen(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// freeAddr is a loopback port with nothing listening.
func freeAddr(t *testing.T) netip.AddrPort {
	ln := listen(t)
	a := addrOf(t, ln.Addr())
	ln.Close()
	return a
}

// silent accepts connections and never answers.
func silent(t *testing.T) netip.AddrPort {
	ln := listen(t)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	return addrOf(t, ln.Addr())
}

func probe(t *testing.T, c Check) error {
	t.Helper()
	if c.Timeout == 0 {
		c.Timeout = 500 * time.Millisecond
	}
	return NewProber().Probe(context.Background(), c)
}

func wantReason(t *testing.T, err error, reason string) {
	t.Helper()
	if err == nil || Reason(err) != reason {
		t.Fatalf("got %v (reason %q), want reason %q", err, Reason(err), reason)
	}
}

func TestHTTP(t *testing.T) {
	var status atomic.Int32
	status.Store(200)
	ln := listen(t)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Host != "svc.example" || r.URL.Path != "/health" || r.Method != http.MethodHead && r.Method != http.MethodGet {
			w.WriteHeader(400)
			return
		}
		w.WriteHeader(int(status.Load()))
		_, _ = io.WriteString(w, "all systems go")
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	target := addrOf(t, ln.Addr())
	c := Check{Kind: HTTP, Target: target, Probe: ProbeOf(ProbeSpec{Path: "/health", Host: "svc.example", ExpectBody: "systems go"})}
	if err := probe(t, c); err != nil {
		t.Fatal(err)
	}
	status.Store(503)
	wantReason(t, probe(t, c), ReasonStatus)
	c = withSpec(c, func(s *ProbeSpec) { s.ExpectStatus, s.ExpectBody = "500-503", "" })
	if err := probe(t, c); err != nil {
		t.Fatalf("503 with expect 500-503: %v", err)
	}
	status.Store(200)
	c = withSpec(c, func(s *ProbeSpec) { s.ExpectStatus, s.ExpectBody = "", "nope" })
	wantReason(t, probe(t, c), ReasonBody)
	c = withSpec(c, func(s *ProbeSpec) { s.ExpectBody, s.Method = "", http.MethodHead })
	if err := probe(t, c); err != nil {
		t.Fatal(err)
	}
	wantReason(t, probe(t, Check{Kind: HTTP, Target: silent(t), Timeout: 200 * time.Millisecond}), ReasonTimeout)
	wantReason(t, probe(t, Check{Kind: HTTP, Target: freeAddr(t)}), ReasonRefused)
}

func TestHTTPSWithTestCA(t *testing.T) {
	ca := testpki.NewCA(t, "backends")
	pair := ca.Server(t, "backend")
	cert, err := tls.LoadX509KeyPair(pair.CertFile, pair.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	ln := tls.NewListener(listen(t), &tls.Config{Certificates: []tls.Certificate{cert}})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {}), ErrorLog: log.New(io.Discard, "", 0)}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	target := addrOf(t, ln.Addr())
	// Without verification any certificate passes; with it, the test CA
	// must be trusted, which the system pool does not.
	if err := probe(t, Check{Kind: HTTPS, Target: target, Probe: ProbeOf(ProbeSpec{TLSName: "localhost"})}); err != nil {
		t.Fatal(err)
	}
	wantReason(t, probe(t, Check{Kind: HTTPS, Target: target, Probe: ProbeOf(ProbeSpec{TLSName: "localhost", TLSVerify: true})}), ReasonTLS)
	pem, _ := os.ReadFile(ca.CertFile)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	p := NewProber()
	p.RootCAs = pool
	if err := p.Probe(context.Background(), Check{Kind: HTTPS, Target: target, Probe: ProbeOf(ProbeSpec{TLSName: "localhost", TLSVerify: true}), Timeout: time.Second}); err != nil {
		t.Fatalf("verified against the test CA: %v", err)
	}
	wantReason(t, p.Probe(context.Background(), Check{Kind: HTTPS, Target: target, Probe: ProbeOf(ProbeSpec{TLSName: "wrong.example", TLSVerify: true}), Timeout: time.Second}), ReasonTLS)
}

// acceptAndClose answers every connection by closing it, until ln closes.
func acceptAndClose(ln net.Listener) {
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
}

func TestTCPAndUDP(t *testing.T) {
	ln := listen(t)
	acceptAndClose(ln)
	if err := probe(t, Check{Kind: TCP, Target: addrOf(t, ln.Addr())}); err != nil {
		t.Fatal(err)
	}
	wantReason(t, probe(t, Check{Kind: TCP, Target: freeAddr(t)}), ReasonRefused)

	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(append([]byte("echo: "), buf[:n]...), from)
		}
	}()
	udp := addrOf(t, pc.LocalAddr())
	if err := probe(t, Check{Kind: UDP, Target: udp, Probe: ProbeOf(ProbeSpec{UDPSend: "ping", UDPExpect: "echo: ping"})}); err != nil {
		t.Fatal(err)
	}
	wantReason(t, probe(t, Check{Kind: UDP, Target: udp, Probe: ProbeOf(ProbeSpec{UDPSend: "ping", UDPExpect: "pong"})}), ReasonBody)
	closed, _ := net.ListenPacket("udp", "127.0.0.1:0")
	closedAddr := addrOf(t, closed.LocalAddr())
	closed.Close()
	wantReason(t, probe(t, Check{Kind: UDP, Target: closedAddr}), ReasonRefused)
}

func TestKindsWithoutProber(t *testing.T) {
	target := netip.MustParseAddrPort("127.0.0.1:9")
	wantReason(t, probe(t, Check{Kind: GRPC, Target: target}), ReasonOther) // no gRPC prober handed in
	m := NewMonitor(slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	defer m.Close()
	m.Disable(Exec, "exec checks are off on this node")
	flag := t.TempDir() + "/ran"
	c := Check{Kind: Exec, Target: target, Probe: ProbeOf(ProbeSpec{Command: "touch " + flag}), Interval: 100 * time.Millisecond, Timeout: time.Second, Rise: 1, Fall: 1}
	g := Check{Kind: GRPC, Target: target, Interval: 100 * time.Millisecond, Timeout: time.Second, Rise: 1, Fall: 1}
	m.Set(map[Check]bool{c: true, g: true})
	st, ok := m.State(c)
	if !ok || st.Up || !st.Settled || st.LastError != "exec checks are off on this node" {
		t.Fatalf("exec check without a prober: %+v, %v", st, ok)
	}
	if st, _ := m.State(g); st.Up || !strings.Contains(st.LastError, "no prober for them") {
		t.Fatalf("grpc check without a prober: %+v", st)
	}
	if _, err := os.Stat(flag); err == nil {
		t.Fatal("the exec check's command ran")
	}
}

type countingObserver struct{ probes, ups, downs atomic.Int32 }

func (o *countingObserver) Probed(Check, time.Duration, error) { o.probes.Add(1) }
func (o *countingObserver) Transition(_ Check, up bool) {
	if up {
		o.ups.Add(1)
	} else {
		o.downs.Add(1)
	}
}

// switchable is a TCP target that can be turned off and on.
type switchable struct {
	t    *testing.T
	addr netip.AddrPort
	ln   net.Listener
}

func newSwitchable(t *testing.T) *switchable {
	s := &switchable{t: t}
	s.on(netip.AddrPort{})
	t.Cleanup(s.off)
	return s
}

func (s *switchable) on(addr netip.AddrPort) {
	a := "127.0.0.1:0"
	if addr.IsValid() {
		a = addr.String()
	}
	ln, err := net.Listen("tcp", a)
	if err != nil {
		s.t.Fatal(err)
	}
	s.ln, s.addr = ln, addrOf(s.t, ln.Addr())
	acceptAndClose(ln)
}

func (s *switchable) off() { s.ln.Close() }

func waitState(t *testing.T, m *Monitor, c Check, up bool) {
	t.Helper()
	testenv.Eventually(t, fmt.Sprintf("check %s up=%v", c, up), func() bool {
		st, ok := m.State(c)
		return ok && st.Up == up
	})
}

func TestMonitorRiseFallAndLifecycle(t *testing.T) {
	goroutines := runtime.NumGoroutine()
	target := newSwitchable(t)
	obs := &countingObserver{}
	m := NewMonitor(slog.New(slog.NewTextHandler(io.Discard, nil)), obs)
	c := Check{Kind: TCP, Target: target.addr, Interval: 20 * time.Millisecond, Timeout: 100 * time.Millisecond, Rise: 3, Fall: 2}
	m.Set(map[Check]bool{c: false}) // starts down: rise successes needed
	waitState(t, m, c, true)
	if p := obs.probes.Load(); p < 3 {
		t.Fatalf("up after %d probes, rise is 3", p)
	}
	target.off()
	waitState(t, m, c, false)
	if st, _ := m.State(c); st.LastError == "" || !st.Transitioned || time.Since(st.Checked) > time.Minute {
		t.Fatalf("down state: %+v (Checked: when the last result came)", st)
	}
	// Config change on the same target keeps the (down) state.
	c2 := c
	c2.Interval, c2.Rise = 30*time.Millisecond, 1
	m.Set(map[Check]bool{c2: true})
	if st, ok := m.State(c2); !ok || st.Up {
		t.Fatalf("state not kept across a config change: %+v", st)
	}
	target.on(target.addr)
	waitState(t, m, c2, true)
	// Deleting the check stops it (and the probe loop with it).
	m.Set(map[Check]bool{})
	if m.Running() != 0 {
		t.Fatal("check still running")
	}
	waitGoroutines(t, goroutines+2, "after deleting every check") // +2: the listener's accept loop and test bookkeeping
	m.Close()
	waitGoroutines(t, goroutines+2, "after Close")
}

func waitGoroutines(t *testing.T, want int, when string) {
	t.Helper()
	testenv.Eventually(t, fmt.Sprintf("at most %d goroutines %s", want, when), func() bool { return runtime.NumGoroutine() <= want })
}

type reasonObserver struct {
	mu     sync.Mutex
	reason map[Check]string
}

func (o *reasonObserver) Probed(c Check, _ time.Duration, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if err == nil {
		o.reason[c] = "ok"
	} else {
		o.reason[c] = Reason(err)
	}
}
func (o *reasonObserver) Transition(Check, bool) {}

func (o *reasonObserver) waitReason(t *testing.T, c Check, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		o.mu.Lock()
		got := o.reason[c]
		o.mu.Unlock()
		if got == want {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("check %s: last result %q, want %q", c, o.reason[c], want)
}

// The probe loop (TCP and HTTP status checks) against real listeners:
// success, wrong status, a status range, a server that never answers, a
// refused port, and a request that cannot be sent.
func TestProbeLoop(t *testing.T) {
	ln := listen(t)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/ok":
			if r.Host != "svc.example" {
				w.WriteHeader(400)
			}
		case "/503":
			w.WriteHeader(503)
		default:
			w.WriteHeader(404)
		}
	}), ErrorLog: log.New(io.Discard, "", 0)}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	target := addrOf(t, ln.Addr())
	base := Check{Target: target, Interval: 20 * time.Millisecond, Timeout: 200 * time.Millisecond, Rise: 1, Fall: 1}
	with := func(kind Kind, f func(*Check)) Check {
		c := base
		c.Kind = kind
		f(&c)
		return c
	}
	httpCheck := func(spec ProbeSpec) Check { return with(HTTP, func(c *Check) { c.Probe = ProbeOf(spec) }) }
	ok := httpCheck(ProbeSpec{Path: "/ok", Host: "svc.example"})
	wrongHost := httpCheck(ProbeSpec{Path: "/ok"})
	unavailable := httpCheck(ProbeSpec{Path: "/503"})
	ranged := httpCheck(ProbeSpec{Path: "/503", ExpectStatus: "500-503"})
	head := httpCheck(ProbeSpec{Path: "/ok", Host: "svc.example", Method: http.MethodHead})
	silentHTTP := with(HTTP, func(c *Check) { c.Target = silent(t) })
	refused := with(TCP, func(c *Check) { c.Target = freeAddr(t) })
	tcpOK := with(TCP, func(*Check) {})
	unsendable := httpCheck(ProbeSpec{Path: "/a b"})
	obs := &reasonObserver{reason: map[Check]string{}}
	m := NewMonitor(slog.New(slog.NewTextHandler(io.Discard, nil)), obs)
	defer m.Close()
	m.Set(map[Check]bool{ok: false, wrongHost: true, unavailable: true, ranged: false, head: false, silentHTTP: true, refused: true, tcpOK: false, unsendable: true})
	for c, want := range map[Check]string{ok: "ok", wrongHost: ReasonStatus, unavailable: ReasonStatus, ranged: "ok", head: "ok",
		silentHTTP: ReasonTimeout, refused: ReasonRefused, tcpOK: "ok", unsendable: ReasonOther} {
		obs.waitReason(t, c, want)
		waitState(t, m, c, want == "ok")
	}
	if st, _ := m.State(unavailable); !strings.Contains(st.LastError, "status 503") {
		t.Fatalf("last error %q, want the status", st.LastError)
	}
}

// A target that fails every other probe flaps below the thresholds: with
// fall 2 and rise 2 it never changes state.
func TestMonitorFlappingAtTheThreshold(t *testing.T) {
	// In a bubble the clock is the test's: 40 probe intervals pass at once
	// and exactly, whatever the machine's load.
	synctest.Test(t, func(t *testing.T) {
		obs := &countingObserver{}
		m := NewMonitor(slog.New(slog.NewTextHandler(io.Discard, nil)), obs)
		defer m.Close()
		// A check whose probes alternate success and failure.
		m.Handle("flip", &flipProber{})
		c := Check{Kind: "flip", Interval: 20 * time.Millisecond, Timeout: time.Second, Rise: 2, Fall: 2}
		m.Set(map[Check]bool{c: true})
		time.Sleep(40 * c.Interval)
		synctest.Wait()
		if n := obs.probes.Load(); n < 20 {
			t.Fatalf("%d probes in 40 intervals", n)
		}
		if st, _ := m.State(c); !st.Up || st.Transitioned || obs.ups.Load()+obs.downs.Load() != 0 {
			t.Fatalf("alternating results changed the state after %d probes: %+v", obs.probes.Load(), st)
		}
	})
}

type flipProber struct{ n atomic.Int32 }

func (f *flipProber) Probe(context.Context, Check) error {
	if f.n.Add(1)%2 == 0 {
		return errors.New("flip")
	}
	return nil
}

// Beyond its limit the monitor runs no more checks: the rest stay down
// with the reason, and start once others go.
func TestMonitorMaxChecks(t *testing.T) {
	m := NewMonitor(slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	defer m.Close()
	m.Handle("flip", &flipProber{})
	m.SetMaxChecks(2)
	checks := make([]Check, 3)
	want := map[Check]bool{}
	for i := range checks {
		checks[i] = Check{Kind: "flip", Target: netip.AddrPortFrom(netip.MustParseAddr("198.18.0.1"), uint16(i+1)), Interval: time.Hour, Timeout: time.Second, Rise: 1, Fall: 1}
		want[checks[i]] = true
	}
	m.Set(want)
	var over []Check
	for _, c := range checks {
		if st, _ := m.State(c); strings.Contains(st.LastError, "over this node's limit of 2 health checks") {
			over = append(over, c)
		}
	}
	if len(over) != 1 || over[0] != checks[2] {
		t.Fatalf("over the limit: %v, want the last of %v", over, checks)
	}
	delete(want, checks[0])
	m.Set(want)
	if st, _ := m.State(checks[2]); !st.Up || st.LastError != "" {
		t.Fatalf("a check under the limit again did not start: %+v", st)
	}
}

func TestStatusSpec(t *testing.T) {
	for spec, codes := range map[string][2][]int{
		"":            {{200, 204, 302, 399}, {400, 500, 199}},
		"200":         {{200}, {201, 404}},
		"200,300-304": {{200, 300, 304}, {305, 201}},
	} {
		for _, c := range codes[0] {
			if !statusExpected(spec, c) {
				t.Errorf("%q should accept %d", spec, c)
			}
		}
		for _, c := range codes[1] {
			if statusExpected(spec, c) {
				t.Errorf("%q should refuse %d", spec, c)
			}
		}
	}
}

func TestMonitorSkipsChecksWithoutTiming(t *testing.T) {
	m := NewMonitor(slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	defer m.Close()
	m.Set(map[Check]bool{{Kind: TCP, Target: freeAddr(t)}: true, {Kind: UDP, Target: freeAddr(t), Interval: time.Second}: true})
	if n := m.Running(); n != 0 {
		t.Fatalf("%d checks running without an interval or timeout", n)
	}
}

// IPv6 targets go through both probe paths (the event loop and a goroutine).
func TestIPv6Targets(t *testing.T) {
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	t.Cleanup(func() { ln.Close() })
	srv := &http.Server{Handler: http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	target := addrOf(t, ln.Addr())
	if err := probe(t, Check{Kind: HTTP, Target: target}); err != nil {
		t.Fatalf("goroutine path: %v", err)
	}
	obs := &reasonObserver{reason: map[Check]string{}}
	m := NewMonitor(slog.New(slog.NewTextHandler(io.Discard, nil)), obs)
	defer m.Close()
	c := Check{Kind: HTTP, Target: target, Interval: 20 * time.Millisecond, Timeout: 200 * time.Millisecond, Rise: 1, Fall: 1}
	m.Set(map[Check]bool{c: false})
	obs.waitReason(t, c, "ok")
}

// Reported results (passive health) count like probes: Fall of them take
// a check down between its probes; the probes bring it back.
func TestMonitorReport(t *testing.T) {
	target := newSwitchable(t)
	m := NewMonitor(slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	defer m.Close()
	c := Check{Kind: TCP, Target: target.addr, Interval: time.Hour, Timeout: time.Second, Rise: 1, Fall: 2}
	if m.Report(c, errors.New("passive")) {
		t.Fatal("a check that is not running took a report")
	}
	m.Set(map[Check]bool{c: true})
	if at, _ := m.Stale(); !at.IsZero() {
		t.Fatalf("stale at %v before any result", at)
	}
	reported := time.Now()
	m.Report(c, errors.New("passive: 9 of 10 not answered"))
	if at, since := m.Stale(); since.Before(reported) || !at.Equal(since.Add(3*(c.Interval+c.Timeout))) {
		t.Fatalf("stale at %v since %v: want three rounds after a result since %v", at, since, reported)
	}
	if st, _ := m.State(c); !st.Up {
		t.Fatalf("down after one report, fall is 2: %+v", st)
	}
	m.Report(c, errors.New("passive: 9 of 10 not answered"))
	if st, _ := m.State(c); st.Up || st.LastError != "passive: 9 of 10 not answered" {
		t.Fatalf("after two reports: %+v", st)
	}
}

// TakeChanged names the checks whose state changed, each once, and
// forgets them: a check that stays down is not news again.
func TestMonitorTakeChanged(t *testing.T) {
	a, b := newSwitchable(t), newSwitchable(t)
	b.off()
	m := NewMonitor(slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	defer m.Close()
	ca := Check{Kind: TCP, Target: a.addr, Interval: 20 * time.Millisecond, Timeout: time.Second, Rise: 1, Fall: 1}
	cb := ca
	cb.Target = b.addr
	m.Set(map[Check]bool{ca: true, cb: true})
	seen := map[Check]int{}
	testenv.Eventually(t, "a settled up and b down, both news", func() bool {
		for _, c := range m.TakeChanged() {
			seen[c]++
		}
		sa, _ := m.State(ca)
		sb, _ := m.State(cb)
		return seen[ca] == 1 && seen[cb] == 1 && sa.Up && sa.Settled && !sb.Up
	})
	a.off()
	waitState(t, m, ca, false)
	if got := m.TakeChanged(); len(got) != 1 || got[0] != ca {
		t.Fatalf("after a went down: %v, want only a's check (b stayed down)", got)
	}
}

// withSpec is c with its probe spec edited by f.
func withSpec(c Check, f func(*ProbeSpec)) Check {
	s := c.Spec()
	f(&s)
	c.Probe = ProbeOf(s)
	return c
}

// Checks with equal probe specs are equal (one prober), with different
// ones different, and an empty spec is the zero handle: a check built
// without a spec equals one built with an empty spec.
func TestProbeSpecInterned(t *testing.T) {
	target := netip.MustParseAddrPort("198.18.0.1:80")
	a := Check{Kind: HTTP, Target: target, Probe: ProbeOf(ProbeSpec{Path: "/health", Host: "a.example"})}
	b := Check{Kind: HTTP, Target: target, Probe: ProbeOf(ProbeSpec{Path: "/health", Host: "a.example"})}
	c := Check{Kind: HTTP, Target: target, Probe: ProbeOf(ProbeSpec{Path: "/health", Host: "b.example"})}
	if a != b || a == c || a.Spec() != b.Spec() || c.Spec().Host != "b.example" {
		t.Fatalf("equal specs: %v %v; different: %v", a == b, a.Spec() == b.Spec(), a != c)
	}
	if plain := (Check{Kind: TCP, Target: target}); plain != (Check{Kind: TCP, Target: target, Probe: ProbeOf(ProbeSpec{})}) || plain.Spec() != (ProbeSpec{}) {
		t.Fatal("a check without a spec differs from one with an empty spec")
	}
}
