package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/merlin-ipvs/merlin/internal/iproute"

	"github.com/merlin-ipvs/merlin/internal/netns"
)

// measure runs the trials of one router and configuration on a new lab.
func measure(kind string, cfg config) (res result, err error) {
	dir, err := os.MkdirTemp("", "merlin-failover-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	defer func() {
		if err != nil {
			err = fmt.Errorf("%w\n%s", err, logTails(dir))
		}
	}()
	l, err := newLab()
	if err != nil {
		return res, err
	}
	defer l.close()
	r, err := startRouter(kind, l.router, cfg, dir)
	if err != nil {
		return res, err
	}
	defer r.stop()
	if err := l.startSpeakers(cfg, dir); err != nil {
		return res, err
	}
	for i := range *trials {
		if err := steady(l, r, cfg); err != nil {
			return res, fmt.Errorf("trial %d: %w", i, err)
		}
		route, gap, failed, err := cut(l, i%2)
		if err != nil {
			return res, fmt.Errorf("trial %d: %w", i, err)
		}
		res.route, res.gap, res.failed = append(res.route, route), append(res.gap, gap), res.failed+failed
	}
	return res, nil
}

// steady waits until the router routes the VIP over both nodes and, with
// BFD, has both BFD sessions up.
func steady(l *lab, r router, cfg config) error {
	var why string
	err := waitFor(90*time.Second, func() bool {
		hops, err := nextHops(l.router)
		switch {
		case err != nil:
			why = err.Error()
		case !slices.Equal(hops, nodeAddrs):
			why = fmt.Sprintf("route via %v", hops)
		case cfg.bfd > 0 && !(r.bfdUp(nodeAddrs[0]) && r.bfdUp(nodeAddrs[1])):
			why = "BFD not up with both nodes"
		default:
			return true
		}
		return false
	})
	if err != nil {
		return fmt.Errorf("steady state %s: %s", err, why)
	}
	return nil
}

// cut takes node i's link down under client traffic, waits for the router
// to route around it, and brings the link back.
func cut(l *lab, i int) (route, gap time.Duration, failed int, err error) {
	c := startClient(l.router)
	if err := waitFor(10*time.Second, func() bool { return c.succeeded() >= 20 }); err != nil {
		c.finish()
		return 0, 0, 0, fmt.Errorf("client before the cut: %w", err)
	}
	survivor := []string{nodeAddrs[1-i]}
	start := time.Now()
	if err := ip(l.nodes[i], "link", "set", "eth0", "down"); err != nil {
		c.finish()
		return 0, 0, 0, err
	}
	err = waitFor(60*time.Second, func() bool {
		hops, err := nextHops(l.router)
		return err == nil && slices.Equal(hops, survivor)
	})
	route = time.Since(start)
	time.Sleep(2 * dialTimeout) // let attempts made before the change end
	attempts := c.finish()
	if uerr := ip(l.nodes[i], "link", "set", "eth0", "up"); err == nil {
		err = uerr
	}
	if err != nil {
		return 0, 0, 0, fmt.Errorf("route around the cut node: %w", err)
	}
	for _, a := range attempts {
		if !a.ok {
			failed++
			gap = max(gap, a.start.Sub(start))
		}
	}
	return route, gap, failed, nil
}

// nextHops of the router's kernel route to the VIP, sorted.
func nextHops(r *netns.NS) ([]string, error) { return iproute.NextHops(r.Name, vip) }

// dialTimeout bounds one attempt: a SYN into a dead node is retried only
// after a second, so an attempt that has not connected by then failed.
const dialTimeout = 200 * time.Millisecond

type attempt struct {
	start time.Time
	ok    bool
}

// client connects to the VIP every 10 ms, each attempt on its own.
type client struct {
	mu       sync.Mutex
	attempts []attempt
	stop     chan struct{}
	wg       sync.WaitGroup
}

func startClient(ns *netns.NS) *client {
	c := &client{stop: make(chan struct{})}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for range 60000 { // bounded: ten minutes
			select {
			case <-c.stop:
				return
			case <-tick.C:
			}
			c.wg.Add(1)
			go func() { defer c.wg.Done(); c.try(ns) }()
		}
	}()
	return c
}

func (c *client) try(ns *netns.NS) {
	a := attempt{start: time.Now()}
	_ = ns.Do(func() error {
		conn, err := net.DialTimeout("tcp4", vip+":80", dialTimeout)
		if err == nil {
			a.ok = true
			conn.Close()
		}
		return nil
	})
	c.mu.Lock()
	c.attempts = append(c.attempts, a)
	c.mu.Unlock()
}

func (c *client) succeeded() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, a := range c.attempts {
		if a.ok {
			n++
		}
	}
	return n
}

func (c *client) finish() []attempt {
	close(c.stop)
	c.wg.Wait()
	return c.attempts
}

// logTails is the end of every log of a run, for an error.
func logTails(dir string) string {
	var b strings.Builder
	logs, _ := filepath.Glob(filepath.Join(dir, "*.log"))
	for _, p := range logs {
		data, _ := os.ReadFile(p)
		lines := strings.Split(strings.TrimSpace(string(data)), "\n")
		fmt.Fprintf(&b, "--- %s\n%s\n", filepath.Base(p), strings.Join(lines[max(len(lines)-15, 0):], "\n"))
	}
	return b.String()
}
