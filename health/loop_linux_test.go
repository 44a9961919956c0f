package health

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/merlin-ipvs/merlin/internal/testenv"
)

// fullListener listens with an accept queue of one and fills it with the
// returned connection, so the kernel drops every further SYN until the test
// accepts.
func fullListener(t *testing.T) (net.Listener, net.Conn) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "listener")
	defer f.Close()
	// As net.Listen does: the port can be listened on again while its
	// closed connections wait in TIME_WAIT.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	ln, err := net.FileListener(f)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	filler, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { filler.Close() })
	return ln, filler
}

// A check's socket outlives its probes: after connects that timed out (the
// server dropped the SYN) the same check connects again once the server
// accepts, and after a refused port it sees the listener that came back.
func TestProbeLoopReusesSocketsAcrossOutcomes(t *testing.T) {
	ln, filler := fullListener(t)
	c := Check{Kind: TCP, Target: addrOf(t, ln.Addr()), Interval: 20 * time.Millisecond, Timeout: 100 * time.Millisecond, Rise: 1, Fall: 1}
	obs := &reasonObserver{reason: map[Check]string{}}
	m := NewMonitor(slog.New(slog.NewTextHandler(io.Discard, nil)), obs)
	defer m.Close()
	m.Set(map[Check]bool{c: true})
	obs.waitReason(t, c, ReasonTimeout)
	acceptAndClose(ln)
	obs.waitReason(t, c, "ok")
	ln.Close()
	filler.Close() // its port would stay taken
	obs.waitReason(t, c, ReasonRefused)
	again, err := net.Listen("tcp", c.Target.String())
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	obs.waitReason(t, c, "ok")
}

// openFiles counts the process's open descriptors.
func openFiles(t *testing.T) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(fds)
}

// The sockets a check keeps between probes are closed when the check goes
// and when the monitor closes.
func TestProbeLoopReleasesSockets(t *testing.T) {
	up := listen(t)
	refused := freeAddr(t)
	before := openFiles(t)
	obs := &countingObserver{}
	m := NewMonitor(slog.New(slog.NewTextHandler(io.Discard, nil)), obs)
	base := Check{Kind: TCP, Interval: 20 * time.Millisecond, Timeout: 100 * time.Millisecond, Rise: 1, Fall: 1}
	checks := map[Check]bool{}
	for _, target := range []net.Addr{up.Addr(), net.TCPAddrFromAddrPort(refused)} {
		c := base
		c.Target = addrOf(t, target)
		checks[c] = true
		c.Kind, c.Probe = HTTP, ProbeOf(ProbeSpec{Path: "/"})
		checks[c] = true
	}
	m.Set(checks)
	testenv.Eventually(t, "40 probes", func() bool { return obs.probes.Load() >= 40 })
	m.Set(map[Check]bool{})
	testenv.Eventually(t, "the descriptors of before the checks", func() bool { return openFiles(t) == before })
	m.Set(checks)
	probes := obs.probes.Load()
	testenv.Eventually(t, "40 more probes", func() bool { return obs.probes.Load() >= probes+40 })
	m.Close()
	if n := openFiles(t); n != before {
		t.Fatalf("%d descriptors open after Close, %d before the monitor", n, before)
	}
}

// stallServerEnv makes the test binary the server of
// TestProbeLoopAnswerQueuedDuringAStall instead of running tests.
const stallServerEnv = "MERLIN_TEST_STALL_SERVER"

// Stalls the server makes, and their timing against the check's timeout.
const (
	stalls      = 5
	stallAnswer = 100 * time.Millisecond // the answer, in time
	stallLength = 700 * time.Millisecond // the test process stopped, past the timeout
	stallTimout = 300 * time.Millisecond
)

func TestMain(m *testing.M) {
	if os.Getenv(stallServerEnv) != "" {
		os.Exit(serveStalling())
	}
	os.Exit(m.Run())
}

// serveStalling answers HTTP requests with 200. For the first stalls
// requests it stops its parent (the test process) on receiving the request,
// answers in time, and lets the parent run again only after the parent's
// timeout has passed: the parent finds the answer queued and its deadline
// gone, as a checker on a stalled machine does.
func serveStalling() int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println(ln.Addr())
	parent := os.Getppid()
	for n := 0; ; n++ {
		conn, err := ln.Accept()
		if err != nil {
			return 1
		}
		r := bufio.NewReader(conn)
		for line, err := r.ReadString('\n'); err == nil && line != "\r\n"; line, err = r.ReadString('\n') {
		}
		stall := n < stalls && unix.Kill(parent, unix.SIGSTOP) == nil
		if stall {
			time.Sleep(stallAnswer)
		}
		_, _ = conn.Write([]byte("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"))
		if stall {
			time.Sleep(stallLength - stallAnswer)
			_ = unix.Kill(parent, unix.SIGCONT)
		}
		conn.Close()
	}
}

// A probe whose answer came in time is not a timeout because the checker
// itself did not run until after its deadline (a stalled machine: the
// runtime then sees the deadline and the answer at once).
func TestProbeLoopAnswerQueuedDuringAStall(t *testing.T) {
	server := exec.Command(os.Args[0])
	server.Env = append(os.Environ(), stallServerEnv+"=1")
	out, err := server.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	server.Stderr = os.Stderr
	if err := server.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = server.Process.Kill(); _ = server.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("the stalling server's address: %v", err)
	}
	target, err := netip.ParseAddrPort(strings.TrimSpace(line))
	if err != nil {
		t.Fatal(err)
	}
	c := Check{Kind: HTTP, Target: target, Probe: ProbeOf(ProbeSpec{Path: "/"}), Interval: stallLength + 200*time.Millisecond, Timeout: stallTimout, Rise: 1, Fall: 1}
	obs := &resultsObserver{}
	m := NewMonitor(slog.New(slog.NewTextHandler(io.Discard, nil)), obs)
	defer m.Close()
	m.Set(map[Check]bool{c: true})
	testenv.Eventually(t, fmt.Sprintf("%d probes", stalls+1), func() bool { return len(obs.all()) > stalls })
	for i, err := range obs.all() {
		if err != nil {
			t.Errorf("probe %d: %v", i+1, err)
		}
	}
}

// resultsObserver keeps every probe's result.
type resultsObserver struct {
	mu      sync.Mutex
	results []error
}

func (o *resultsObserver) Probed(_ Check, _ time.Duration, err error) {
	o.mu.Lock()
	o.results = append(o.results, err)
	o.mu.Unlock()
}
func (o *resultsObserver) Transition(Check, bool) {}

func (o *resultsObserver) all() []error {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.results)
}
