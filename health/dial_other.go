//go:build !linux

package health

import (
	"context"
	"net"
	"net/netip"
	"time"
)

// probeConn is a TCP connection opened for one probe (the net package's,
// where the Linux raw-socket dialer is not available).
type probeConn struct{ net.Conn }

func dialProbe(ctx context.Context, target netip.AddrPort, deadline time.Time) (*probeConn, error) {
	d := net.Dialer{Deadline: deadline}
	c, err := d.DialContext(ctx, "tcp", target.String())
	if err != nil {
		return nil, err
	}
	if err := c.SetDeadline(deadline); err != nil {
		c.Close()
		return nil, err
	}
	return &probeConn{c}, nil
}

// reset closes with a TCP reset, as on Linux.
func (c *probeConn) reset() {
	if tc, ok := c.Conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	c.Close()
}
