// Package connlimit caps the concurrent connections a listener hands out:
// beyond the cap a new connection is closed at once and counted, so that
// clients can never take every file descriptor of the process (merlin's
// embedded etcd needs its own). It needs no privileges.
package connlimit

import (
	"net"
	"sync"
	"sync/atomic"
)

// Listener is a net.Listener with a cap on open connections.
type Listener struct {
	net.Listener
	max      int64
	open     atomic.Int64
	refused  atomic.Uint64
	onRefuse func()
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

// New wraps l; onRefuse (may be nil) is called for each refused connection.
func New(l net.Listener, max int, onRefuse func()) *Listener {
	return &Listener{Listener: l, max: int64(max), onRefuse: onRefuse}
}

// Accept returns the next connection within the cap; those beyond it are
// closed without a word (the client sees the connection reset or closed).
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.open.Add(1) > l.max {
			l.open.Add(-1)
			l.refused.Add(1)
			_ = c.Close()
			if l.onRefuse != nil {
				l.onRefuse()
			}
			continue
		}
		return &conn{Conn: c, l: l}, nil
	}
}

// Open is the number of connections handed out and not yet closed.
func (l *Listener) Open() int64 { return l.open.Load() }

// Refused counts the connections closed for being beyond the cap.
func (l *Listener) Refused() uint64 { return l.refused.Load() }

type conn struct {
	net.Conn
	l    *Listener
	once sync.Once
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.open.Add(-1) })
	return err
}
