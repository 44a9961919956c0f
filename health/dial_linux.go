package health

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// probeConn is a TCP connection opened for one probe: a non-blocking
// socket driven by the runtime's poller through *os.File, without the net
// package's per-dial work a probe does not need (address resolution,
// keep-alive and no-delay options, local and peer address lookups).
type probeConn struct {
	*os.File
	remote netip.AddrPort
	stop   func() bool // stops the context's cancellation hook
}

// dialProbe connects to target before deadline. Cancelling ctx interrupts
// the connect and every later read or write.
func dialProbe(ctx context.Context, check Check, deadline time.Time) (*probeConn, error) {
	target := check.Target
	addr := newRawSockaddr(target)
	fd, err := unix.Socket(addr.family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	if err := pathSocket(fd, check); err != nil {
		unix.Close(fd)
		return nil, err
	}
	// The descriptor is non-blocking, so os.NewFile registers it with the
	// poller.
	c := &probeConn{File: os.NewFile(uintptr(fd), "probe"), remote: target}
	if err := c.SetDeadline(deadline); err != nil {
		c.Close()
		return nil, err
	}
	if ctx.Done() != nil {
		c.stop = context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	}
	raw, err := c.SyscallConn()
	if err != nil {
		c.Close()
		return nil, err
	}
	// connect runs inside the first call: RawConn.Write forgets readiness
	// seen before it starts, so a connect finishing earlier would be missed.
	var connectErr error
	started := false
	err = raw.Write(func(fd uintptr) bool {
		if !started {
			started = true
			sa, saLen := addr.ptr()
			err := rawConnect(int(fd), sa, saLen)
			switch {
			case err == nil:
				return true
			case errors.Is(err, unix.EINPROGRESS):
				return false // wait until the socket is writable
			default:
				connectErr = os.NewSyscallError("connect", err)
				return true
			}
		}
		soErr, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
		switch {
		case err != nil:
			connectErr = os.NewSyscallError("getsockopt", err)
		case soErr == 0:
			// The poller can wake spuriously: connected only if there is a peer.
			if _, err := unix.Getpeername(int(fd)); err != nil {
				return false
			}
		case unix.Errno(soErr) == unix.EINPROGRESS || unix.Errno(soErr) == unix.EALREADY || unix.Errno(soErr) == unix.EINTR:
			return false
		default:
			connectErr = os.NewSyscallError("connect", unix.Errno(soErr))
		}
		return true
	})
	if err == nil {
		err = connectErr
	}
	if err != nil {
		c.Close()
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return nil, &net.OpError{Op: "dial", Net: "tcp", Addr: net.TCPAddrFromAddrPort(target), Err: err}
	}
	return c, nil
}

// reset closes the connection with a TCP reset instead of a FIN handshake:
// a checker opening thousands of connections a second would otherwise
// hold as many sockets in TIME_WAIT (HAProxy closes its checks the same way).
func (c *probeConn) reset() {
	if raw, err := c.SyscallConn(); err == nil {
		_ = raw.Control(func(fd uintptr) {
			_ = unix.SetsockoptLinger(int(fd), unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
		})
	}
	c.Close()
}

// Close releases the socket and the cancellation hook.
func (c *probeConn) Close() error {
	if c.stop != nil {
		c.stop()
	}
	return c.File.Close()
}

// LocalAddr and RemoteAddr make a probeConn a net.Conn (for TLS).
func (c *probeConn) LocalAddr() net.Addr  { return nil }
func (c *probeConn) RemoteAddr() net.Addr { return net.TCPAddrFromAddrPort(c.remote) }

func zoneID(zone string) uint32 {
	if zone == "" {
		return 0
	}
	if ifi, err := net.InterfaceByName(zone); err == nil {
		return uint32(ifi.Index)
	}
	return 0
}
