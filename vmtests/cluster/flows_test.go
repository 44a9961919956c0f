package cluster

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/merlin-ipvs/merlin/vmtests/lab"
)

// A flow is one long-lived client conversation through a VIP: a TCP
// connection or a UDP socket (one source port) that exchanges a message
// every interval. It ends at its first failure: a reset (TCP: the
// connection closed or refused; UDP: another real server answered) or a
// stall (no answer for stallAfter). A message that takes longer than
// slowAfter (TCP retransmits with exponential backoff after packets lost
// while a router reroutes) is a pause, counted and timed.
type flow struct {
	service, backend string
	tcp              net.Conn
	udp              net.Conn
	failure          string // "" while it works; "reset: …" or "stall: …"
	failedAt         time.Time
	rounds           int
	pauses           int
	longest          time.Duration // the longest message exchange
}

// port is the flow's client port.
func (f *flow) port() int {
	if f.tcp != nil {
		return f.tcp.LocalAddr().(*net.TCPAddr).Port
	}
	return f.udp.LocalAddr().(*net.UDPAddr).Port
}

const (
	stallAfter = 30 * time.Second
	slowAfter  = 3 * time.Second
)

// flows drives many flows at once until stopped.
type flows struct {
	interval time.Duration
	mu       sync.Mutex
	all      []*flow
	wg       sync.WaitGroup
	stop     chan struct{}
}

func newFlows(interval time.Duration) *flows {
	return &flows{interval: interval, stop: make(chan struct{})}
}

// openTCP opens k TCP flows to addr from the lab's client.
func (fs *flows) openTCP(c *cluster, service, addr string, k int) {
	c.t.Helper()
	for range k {
		conn, name, err := c.connect(addr)
		c.must(err)
		fs.start(&flow{service: service, backend: name, tcp: conn})
	}
}

// openUDP opens k UDP flows to addr from the lab's client.
func (fs *flows) openUDP(c *cluster, service, addr string, k int) {
	c.t.Helper()
	for i := range k {
		var conn net.Conn
		c.must(c.Client.Do(func() (err error) { conn, err = net.Dial("udp4", addr); return err }))
		f := &flow{service: service, udp: conn}
		name, err := f.udpRound(fmt.Sprintf("hello %d", i), "")
		c.must(err)
		f.backend = name
		fs.start(f)
	}
}

func (fs *flows) start(f *flow) {
	fs.mu.Lock()
	fs.all = append(fs.all, f)
	fs.mu.Unlock()
	fs.wg.Go(func() { fs.drive(f) })
}

// drive exchanges a message every interval (first after a random part of
// it, so the flows spread out) until stop or the first failure.
func (fs *flows) drive(f *flow) {
	wait := time.Duration(rand.Int64N(int64(fs.interval)))
	for round := 0; round < 100000; round++ { // bounded; stopped long before
		select {
		case <-fs.stop:
			return
		case <-time.After(wait):
		}
		wait = fs.interval
		line := fmt.Sprintf("%s round %d", f.service, round)
		sent := time.Now()
		var err error
		if f.tcp != nil {
			err = tcpRound(f.tcp, line)
		} else {
			_, err = f.udpRound(line, f.backend)
		}
		took := time.Since(sent)
		fs.mu.Lock()
		if err != nil {
			f.failure, f.failedAt = err.Error(), time.Now()
		} else {
			f.rounds++
		}
		if took > slowAfter {
			f.pauses++
		}
		f.longest = max(f.longest, took)
		fs.mu.Unlock()
		if err != nil {
			return
		}
	}
}

func tcpRound(conn net.Conn, line string) error {
	err := lab.EchoWithin(conn, line, stallAfter)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("stall: %w", err)
	}
	if err != nil {
		return fmt.Errorf("reset: %w", err)
	}
	return nil
}

// udpRound sends line until its answer comes (lost datagrams are sent
// again each second) or stallAfter passes; an answer from another server
// than want (if set) is a reset. It returns the server that answered.
func (f *flow) udpRound(line, want string) (string, error) {
	deadline := time.Now().Add(stallAfter)
	buf := make([]byte, 1500)
	for time.Now().Before(deadline) {
		if _, err := f.udp.Write([]byte(line)); err != nil {
			return "", fmt.Errorf("reset: send: %w", err)
		}
		_ = f.udp.SetReadDeadline(time.Now().Add(time.Second))
		for {
			n, err := f.udp.Read(buf)
			if err != nil {
				break // lost (or refused by ICMP): send again
			}
			name, got, _ := strings.Cut(string(buf[:n]), " ")
			if got != line {
				continue // a late answer to an earlier try
			}
			if want != "" && name != want {
				return name, fmt.Errorf("reset: answered by %s, not %s", name, want)
			}
			return name, nil
		}
	}
	return "", fmt.Errorf("stall: no answer to %q for %s", line, stallAfter)
}

// finish stops every flow and closes them.
func (fs *flows) finish() {
	close(fs.stop)
	fs.wg.Wait()
	for _, f := range fs.all {
		if f.tcp != nil {
			f.tcp.Close()
		} else {
			f.udp.Close()
		}
	}
}

// failures counts the flows that failed, leaving out those whose real
// server is in gone (a server taken out may end its flows), and lists a
// few of them (with the time since since and the client port).
func (fs *flows) failures(since time.Time, gone ...string) (failed, total int, some []string) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	for _, f := range fs.all {
		if slices.Contains(gone, f.backend) {
			continue
		}
		total++
		if f.failure != "" {
			failed++
			if len(some) < 5 {
				some = append(some, fmt.Sprintf("%s via %s from port %d, at +%s after %d rounds: %s", f.service, f.backend, f.port(), f.failedAt.Sub(since).Round(100*time.Millisecond), f.rounds, f.failure))
			}
		}
	}
	return failed, total, some
}

// pauses counts the flows that paused (a message took over slowAfter) and
// the longest exchange of any.
func (fs *flows) pausesSoFar() (paused int, longest time.Duration) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	for _, f := range fs.all {
		if f.pauses > 0 {
			paused++
		}
		longest = max(longest, f.longest)
	}
	return paused, longest
}
