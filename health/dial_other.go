//go:build !linux

package health

import (
	"context"
	"net"
	"time"
)

// probeConn is a TCP connection opened for one probe (the net package's,
// where the Linux raw-socket dialer is not available).
type probeConn struct{ net.Conn }

func dialProbe(ctx context.Context, check Check, deadline time.Time) (*probeConn, error) {
	d, err := PathDialer(check, "tcp")
	if err != nil {
		return nil, err
	}
	d.Deadline = deadline
	c, err := d.DialContext(ctx, "tcp", check.Target.String())
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
