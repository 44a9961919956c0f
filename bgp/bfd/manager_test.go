package bfd

import (
	"context"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

var (
	addrA = netip.MustParseAddr("198.18.9.1")
	addrB = netip.MustParseAddr("198.18.9.2")
)

// recorder keeps the changes a manager reports.
type recorder struct {
	mu      sync.Mutex
	changes []Change
}

func (r *recorder) add(c Change) {
	r.mu.Lock()
	r.changes = append(r.changes, c)
	r.mu.Unlock()
}

func (r *recorder) all() []Change {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Change(nil), r.changes...)
}

func (r *recorder) last() (Change, bool) {
	all := r.all()
	if len(all) == 0 {
		return Change{}, false
	}
	return all[len(all)-1], true
}

type end struct {
	m    *Manager
	rec  *recorder
	stop context.CancelFunc
	done chan struct{}
}

func startEnd(t *testing.T, w *wire, self, peer netip.Addr, cfg Config) *end {
	t.Helper()
	e := &end{rec: &recorder{}, done: make(chan struct{})}
	e.m = newManager(slog.New(slog.DiscardHandler), host{w: w, addr: self}, e.rec.add)
	if err := e.m.Set([]Peer{{Address: peer, Config: cfg}}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	e.stop = func() { cancel(); <-e.done }
	go func() { defer close(e.done); _ = e.m.Run(ctx) }()
	t.Cleanup(e.stop)
	return e
}

func (e *end) state(t *testing.T) Status {
	t.Helper()
	st := e.m.Status()
	if len(st) != 1 {
		t.Fatalf("%d sessions, want 1", len(st))
	}
	return st[0]
}

// waitState advances the fake clock until the session is in want or
// limit has passed; it returns how long that took.
func waitState(t *testing.T, e *end, want State, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) <= limit {
		if e.state(t).State == want {
			return time.Since(start)
		}
		time.Sleep(time.Millisecond)
		synctest.Wait()
	}
	t.Fatalf("session still %s after %s, want %s", e.state(t).State, limit, want)
	return 0
}

func TestSessionsComeUpAndNegotiate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWire()
		a := startEnd(t, w, addrA, addrB, Config{MinTx: 100 * time.Millisecond, MinRx: 200 * time.Millisecond, Multiplier: 4})
		b := startEnd(t, w, addrB, addrA, Config{}) // 300 ms × 3
		waitState(t, a, Up, 5*time.Second)
		waitState(t, b, Up, 5*time.Second)
		time.Sleep(2 * time.Second) // the poll sequences settle
		synctest.Wait()
		sa, sb := a.state(t), b.state(t)
		// a sends as fast as b takes (300 ms, not its own 100 ms); b detects
		// in a's multiplier × max(b's min rx, a's tx) = 4 × 300 ms.
		if sa.TxInterval != 300*time.Millisecond || sa.DetectTime != 900*time.Millisecond {
			t.Errorf("a: tx %s, detect %s; want 300ms and 900ms (3 × max(200ms, 300ms))", sa.TxInterval, sa.DetectTime)
		}
		if sb.TxInterval != 300*time.Millisecond || sb.DetectTime != 1200*time.Millisecond {
			t.Errorf("b: tx %s, detect %s; want 300ms and 1.2s", sb.TxInterval, sb.DetectTime)
		}
		if sa.RemoteState != Up || sa.Flaps != 0 || sa.Received == 0 || sa.Sent == 0 {
			t.Errorf("a: %+v", sa)
		}
		for _, c := range a.rec.all() {
			if c.To == Down {
				t.Errorf("a reported %+v while coming up", c)
			}
		}
	})
}

func TestSilentPeerDetected(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWire()
		a := startEnd(t, w, addrA, addrB, Config{})
		b := startEnd(t, w, addrB, addrA, Config{})
		waitState(t, a, Up, 5*time.Second)
		waitState(t, b, Up, 5*time.Second)
		time.Sleep(2 * time.Second)
		w.setCut(true)
		took := waitState(t, a, Down, 10*time.Second)
		if limit := a.state(t).LastDiag; limit != DiagDetectExpired {
			t.Errorf("diag %s, want %s", limit, DiagDetectExpired)
		}
		// Detection is 900 ms after the last packet, which left up to one
		// interval (300 ms) before the cut.
		if took > 900*time.Millisecond+time.Millisecond {
			t.Errorf("a silent peer was detected after %s, want at most the detection time 900ms", took)
		}
		c, _ := a.rec.last()
		if c.From != Up || c.To != Down || c.Diag != DiagDetectExpired {
			t.Errorf("last change %+v, want up → down by detection", c)
		}
		st := a.state(t)
		if st.Flaps != 1 || st.LastDown.IsZero() {
			t.Errorf("flaps %d, last down %v; want 1 and set", st.Flaps, st.LastDown)
		}
		w.setCut(false) // the link is back: the sessions come up again
		waitState(t, a, Up, 5*time.Second)
		waitState(t, b, Up, 5*time.Second)
	})
}

func TestPlannedStopSignalsAdminDown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWire()
		a := startEnd(t, w, addrA, addrB, Config{})
		b := startEnd(t, w, addrB, addrA, Config{})
		waitState(t, a, Up, 5*time.Second)
		waitState(t, b, Up, 5*time.Second)
		a.stop()
		waitState(t, b, Down, 200*time.Millisecond) // told at once, no detection time
		c, _ := b.rec.last()
		if c.Diag != DiagNeighborDown || c.From != Up {
			t.Errorf("b's last change %+v, want up → down, neighbor signaled", c)
		}
		if st := b.state(t); st.RemoteState != AdminDown {
			t.Errorf("b sees the remote %s, want admin-down", st.RemoteState)
		}
		if c, _ := a.rec.last(); c.To != AdminDown {
			t.Errorf("a's last change %+v, want → admin-down", c)
		}
	})
}

func TestRemovedPeerSignalsAdminDown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWire()
		a := startEnd(t, w, addrA, addrB, Config{})
		b := startEnd(t, w, addrB, addrA, Config{})
		waitState(t, b, Up, 5*time.Second)
		if err := a.m.Set(nil); err != nil {
			t.Fatal(err)
		}
		waitState(t, b, Down, 200*time.Millisecond)
		if c, _ := b.rec.last(); c.Diag != DiagNeighborDown {
			t.Errorf("b's last change %+v, want neighbor signaled", c)
		}
		if st := a.state(t); st.State != AdminDown || st.Flaps != 0 {
			t.Errorf("a removed session: %+v, want admin-down and no flap (a removal is no failure)", st)
		}
		// Changed timers restart the session; the same ones leave it alone.
		if err := a.m.Set([]Peer{{Address: addrB}}); err != nil {
			t.Fatal(err)
		}
		waitState(t, a, Up, 5*time.Second)
		if st := a.state(t); st.Flaps != 0 || st.State != Up {
			t.Errorf("a session back for the same peer: %+v, want up and no flap", st)
		}
		flaps := b.state(t).Flaps
		if err := a.m.Set([]Peer{{Address: addrB, Config: Config{MinTx: DefaultInterval}}}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(3 * time.Second)
		synctest.Wait()
		if a.state(t).State != Up || b.state(t).Flaps != flaps {
			t.Errorf("setting the same timers (spelled out) moved the session: a %s, b flaps %d → %d", a.state(t).State, flaps, b.state(t).Flaps)
		}
	})
}

func TestHostilePacketsAreDropped(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWire()
		a := startEnd(t, w, addrA, addrB, Config{})
		b := startEnd(t, w, addrB, addrA, Config{})
		waitState(t, a, Up, 5*time.Second)
		my := a.state(t)
		_ = b
		down := packet{State: Down, DetectMult: 3, MyDisc: 77, DesiredMinTx: time.Second, RequiredMinRx: time.Second}
		admin := down
		admin.State = AdminDown
		// Each would take a's session down if taken.
		w.inject(addrA, addrB, 254, admin.marshal())                                                         // from farther than next door
		w.inject(addrA, netip.MustParseAddr("198.18.9.3"), 255, admin.marshal())                             // no such peer
		w.inject(addrA, addrB, 255, packet{State: Up, DetectMult: 3, MyDisc: 77, YourDisc: 12345}.marshal()) // wrong discriminator
		w.inject(addrA, addrB, 255, append(admin.marshal()[:20:20], 0))                                      // short
		auth := admin.marshal()
		auth[1] |= flagAuth
		w.inject(addrA, addrB, 255, auth)
		synctest.Wait()
		got := a.m.Dropped()
		want := Counters{BadTTL: 1, UnknownPeer: 1, BadDiscriminator: 1, Malformed: 2}
		if got != want {
			t.Errorf("dropped %+v, want %+v", got, want)
		}
		if st := a.state(t); st.State != Up || st.Flaps != my.Flaps {
			t.Errorf("a forged packet moved the session: %+v", st)
		}
	})
}

func TestConfigValidation(t *testing.T) {
	for _, c := range []struct {
		cfg  Config
		want string
	}{
		{Config{MinTx: time.Millisecond}, "bfd.min_tx 1ms: want 10ms to 1m0s"},
		{Config{MinRx: 2 * time.Minute}, "bfd.min_rx 2m0s: want 10ms to 1m0s"},
		{Config{MinTx: 15500 * time.Microsecond}, "bfd.min_tx 15.5ms: whole milliseconds"},
	} {
		err := c.cfg.Validate("bfd.")
		if err == nil || err.Error()[:len(c.want)] != c.want {
			t.Errorf("%+v: %v, want %q…", c.cfg, err, c.want)
		}
	}
	if err := (Config{MinTx: 50 * time.Millisecond, Multiplier: 1}).Validate("bfd."); err != nil {
		t.Error(err)
	}
}
