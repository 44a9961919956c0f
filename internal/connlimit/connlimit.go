// Package connlimit caps the concurrent connections a listener hands out,
// in all and per source: beyond a cap a new connection is closed at once
// and counted, so that clients can never take every file descriptor of the
// process (merlin's embedded etcd needs its own), and one source (an IPv4
// address, an IPv6 /64) cannot take the whole budget from everyone else. It
// needs no privileges.
package connlimit

import (
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
)

// Listener is a net.Listener with caps on open connections.
type Listener struct {
	net.Listener
	max       int64
	perSource int
	open      atomic.Int64
	refused   atomic.Uint64
	onRefuse  func()

	mu       sync.Mutex
	bySource map[netip.Prefix]int
}

// Fit lowers a connection cap so that the process keeps descriptors of
// its own under its limit of open files (nofile): 512, or half of them
// when it has fewer than 1,024. lowered says the cap had to change.
func Fit(max int, nofile uint64) (fitted int, lowered bool) {
	reserve := min(512, nofile/2)
	if room := int(min(nofile-reserve, 1<<30)); max > room {
		return room, true
	}
	return max, false
}

// New wraps l with a cap of max connections, perSource of them (0: no
// such cap) from one source; onRefuse (may be nil) is called for each
// refused connection.
func New(l net.Listener, max, perSource int, onRefuse func()) *Listener {
	return &Listener{Listener: l, max: int64(max), perSource: perSource, onRefuse: onRefuse, bySource: map[netip.Prefix]int{}}
}

// sourceOf is what one client controls: its IPv4 address, or the /64 of
// its IPv6 address.
func sourceOf(a net.Addr) netip.Prefix {
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Prefix{}
	}
	ip := ap.Addr().Unmap()
	if ip.Is4() {
		return netip.PrefixFrom(ip, 32)
	}
	p, _ := ip.WithZone("").Prefix(64)
	return p
}

// take counts a new connection from src; false when a cap says no.
func (l *Listener) take(src netip.Prefix) bool {
	// Under the lock, and counted only once taken, so that Open never
	// includes a connection about to be refused.
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open.Load() >= l.max || l.perSource > 0 && l.bySource[src] >= l.perSource {
		return false
	}
	l.open.Add(1)
	if l.perSource > 0 {
		l.bySource[src]++
	}
	return true
}

func (l *Listener) release(src netip.Prefix) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.open.Add(-1)
	if l.perSource <= 0 {
		return
	}
	if l.bySource[src]--; l.bySource[src] <= 0 {
		delete(l.bySource, src)
	}
}

// Accept returns the next connection within the cap; those beyond it are
// closed without a word (the client sees the connection reset or closed).
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		src := sourceOf(c.RemoteAddr())
		if !l.take(src) {
			l.refused.Add(1)
			_ = c.Close()
			if l.onRefuse != nil {
				l.onRefuse()
			}
			continue
		}
		return &conn{Conn: c, l: l, src: src}, nil
	}
}

// Open is the number of connections handed out and not yet closed.
func (l *Listener) Open() int64 { return l.open.Load() }

// Refused counts the connections closed for being beyond the cap.
func (l *Listener) Refused() uint64 { return l.refused.Load() }

type conn struct {
	net.Conn
	l    *Listener
	src  netip.Prefix
	once sync.Once
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c.src) })
	return err
}
