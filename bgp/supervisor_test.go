package bgp

import (
	"bytes"
	"context"
	"log/slog"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	pkt "github.com/osrg/gobgp/v4/pkg/packet/bgp"

	"github.com/merlin-ipvs/merlin/internal/testenv"
)

// TestMain lets this test binary be the speaker process of a Supervised.
func TestMain(m *testing.M) {
	RunChildIfAsked()
	os.Exit(m.Run())
}

func startSupervised(t *testing.T, cfg Config, log *slog.Logger) *Supervised {
	t.Helper()
	s, err := NewSupervised(cfg, log, "")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return s
}

// TestSupervisedSpeakerSurvivesItsCrash: the speaker process dies as a
// Go panic does (SIGABRT: stack dump, exit 2); the supervisor logs its
// output, starts a new one with the same routes, and the router learns
// them again over a new session.
func TestSupervisedSpeakerSurvivesItsCrash(t *testing.T) {
	r := newRouter(t, "127.0.0.1", 65000, neighbor("127.0.0.9", 65001, ""))
	var logged testenv.Buffer
	s := startSupervised(t, Config{LocalAS: 65001, RouterID: netip.MustParseAddr("192.0.2.1"),
		Peers: []Peer{{Address: r.addr, Port: r.port, AS: 65000, Local: netip.MustParseAddr("127.0.0.9"), ConnectRetry: time.Second}}},
		slog.New(slog.NewTextHandler(&logged, nil)))
	ctx := context.Background()
	routes := []Route{HostRoute(netip.MustParseAddr("198.18.0.1")), HostRoute(netip.MustParseAddr("198.18.0.2"))}
	testenv.Eventually(t, "a speaker process", func() bool { return s.PID() != 0 })
	if err := s.Set(ctx, routes); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "both routes at the router", func() bool { return len(r.learned(pkt.RF_IPv4_UC)) == 2 })
	testenv.Eventually(t, "the session up", func() bool { ps, _ := s.Peers(ctx); return ps[0].Up })
	first := s.PID()
	if err := syscall.Kill(first, syscall.SIGABRT); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "a new speaker process", func() bool { return s.Restarts() == 1 && s.PID() != 0 && s.PID() != first })
	testenv.Eventually(t, "the session up again", func() bool { ps, _ := s.Peers(ctx); return ps[0].Up })
	testenv.Eventually(t, "both routes at the router again", func() bool { return len(r.learned(pkt.RF_IPv4_UC)) == 2 })
	if got := s.Announced(); len(got) != 2 {
		t.Errorf("announced %v after the restart, want both routes", got)
	}
	out := logged.Bytes()
	for _, want := range []string{"bgp speaker ended; starting a new one", "SIGABRT", "Peer Up"} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
	if n := bytes.Count(out, []byte("bgp speaker output")); n > maxRawLines+1 {
		t.Errorf("%d lines of the crash logged, want at most %d", n, maxRawLines+1)
	}
}

// TestSupervisedSpeakerStopsItsProcess: Run's end stops the speaker
// process (no orphan holding the BGP port).
func TestSupervisedSpeakerStopsItsProcess(t *testing.T) {
	s, err := NewSupervised(Config{LocalAS: 65001, RouterID: netip.MustParseAddr("192.0.2.1")}, testLog(t), "")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	testenv.Eventually(t, "a speaker process", func() bool { return s.PID() != 0 })
	pid := s.PID()
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, 0); err == nil {
		t.Errorf("speaker process %d still runs after Run returned", pid)
	}
}

// TestSupervisedSpeakerThatCannotStart: a bad program is an error from
// Run, not a restart loop.
func TestSupervisedSpeakerThatCannotStart(t *testing.T) {
	s, err := NewSupervised(Config{LocalAS: 65001, RouterID: netip.MustParseAddr("192.0.2.1")}, testLog(t), "/nonexistent/merlin")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Run(context.Background()); err == nil {
		t.Fatal("Run of a program that does not exist returned nil")
	}
}
