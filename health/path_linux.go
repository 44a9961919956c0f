package health

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// pathSocket prepares a probe socket for a check through the VIP: the
// mark, and the node's own source address toward the server.
func pathSocket(fd int, c Check) error {
	if c.Mark == 0 {
		return nil
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(c.Mark)); err != nil {
		return os.NewSyscallError("setsockopt SO_MARK", err)
	}
	src, err := sourceToward(c.Via)
	if err != nil {
		return err
	}
	sa := newRawSockaddr(netip.AddrPortFrom(src, 0))
	p, n := sa.ptr()
	if _, _, errno := unix.Syscall(unix.SYS_BIND, uintptr(fd), uintptr(p), n); errno != 0 {
		return os.NewSyscallError("bind", errno)
	}
	return nil
}

// sourceToward is the address the node sends from toward a: what the
// kernel picks for a UDP socket connected to it (no packet is sent).
func sourceToward(a netip.Addr) (netip.Addr, error) {
	conn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(a, 9)))
	if err != nil {
		return netip.Addr{}, fmt.Errorf("no route to %s for a check through the VIP: %w", a, err)
	}
	defer conn.Close()
	return conn.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap(), nil
}

// PathDialer is the net.Dialer of a probe made with the net package (UDP,
// gRPC): for a check through the VIP it marks the socket and leaves from
// the node's address toward the server.
func PathDialer(c Check, network string) (*net.Dialer, error) {
	if c.Mark == 0 {
		return &net.Dialer{}, nil
	}
	src, err := sourceToward(c.Via)
	if err != nil {
		return nil, err
	}
	var local net.Addr = &net.TCPAddr{IP: src.AsSlice()}
	if network == "udp" {
		local = &net.UDPAddr{IP: src.AsSlice()}
	}
	return &net.Dialer{LocalAddr: local, Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(c.Mark)) }); err != nil {
			return err
		}
		return serr
	}}, nil
}
