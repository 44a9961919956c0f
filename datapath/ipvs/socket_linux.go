package ipvs

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// netlinkSocket is the kernel behind a Client: a generic netlink socket
// with IPVS's family resolved.
type netlinkSocket struct {
	nl   *netlink.Conn
	raw  syscall.RawConn
	rbuf []byte
	wbuf []byte // the last datagram sent
}

// dialNetlink opens a generic netlink socket in opts.NetNS, resolves the
// IPVS family and sizes the buffers.
func dialNetlink(opts Options) (socket, sockInfo, error) {
	nl, err := netlink.Dial(unix.NETLINK_GENERIC, &netlink.Config{NetNS: opts.NetNS})
	if err != nil {
		return nil, sockInfo{}, fmt.Errorf("ipvs: dial generic netlink: %w", err)
	}
	fam, err := genetlink.NewConn(nl).GetFamily(genlName)
	if err != nil {
		nl.Close()
		if errors.Is(err, os.ErrNotExist) {
			return nil, sockInfo{}, fmt.Errorf("ipvs: %w", ErrNoIPVS)
		}
		return nil, sockInfo{}, fmt.Errorf("ipvs: resolve generic netlink family: %w", err)
	}
	s, info, err := configure(nl, opts)
	if err != nil {
		nl.Close()
		return nil, sockInfo{}, fmt.Errorf("ipvs: %w", err)
	}
	info.family = fam.ID
	return s, info, nil
}

func configure(nl *netlink.Conn, opts Options) (*netlinkSocket, sockInfo, error) {
	raw, err := nl.SyscallConn()
	if err != nil {
		return nil, sockInfo{}, err
	}
	// Error reports carry only the request header, not the whole request,
	// and extended acks carry the kernel's message for policy failures.
	for _, o := range []netlink.ConnOption{netlink.CapAcknowledge, netlink.ExtendedAcknowledge} {
		if err := nl.SetOption(o, true); err != nil {
			return nil, sockInfo{}, fmt.Errorf("set socket option: %w", err)
		}
	}
	rcv, snd, err := setBuffers(raw, opts.ReceiveBuffer, opts.SendBuffer)
	if err != nil {
		return nil, sockInfo{}, fmt.Errorf("socket buffers: %w", err)
	}
	return &netlinkSocket{nl: nl, raw: raw, rbuf: make([]byte, 256<<10)}, sockInfo{pid: nl.PID(), rcvBuf: rcv, sndBuf: snd}, nil
}

// setBuffers asks for the given sizes (forcing past the sysctl limits where
// privileged) and returns what the kernel granted.
func setBuffers(raw syscall.RawConn, rcv, snd int) (int, int, error) {
	var gotRcv, gotSnd int
	var serr error
	err := raw.Control(func(fd uintptr) {
		set := func(force, plain, size int) {
			if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, force, size) != nil {
				_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, plain, size)
			}
		}
		set(unix.SO_RCVBUFFORCE, unix.SO_RCVBUF, rcv)
		set(unix.SO_SNDBUFFORCE, unix.SO_SNDBUF, snd)
		if gotRcv, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF); serr != nil {
			return
		}
		gotSnd, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF)
	})
	if err == nil {
		err = serr
	}
	return gotRcv, gotSnd, err
}

// SendMessages sends msgs in one sendmsg, written into a buffer the
// socket keeps: netlink.Conn's marshals each message into a new slice and
// grows the datagram by appending (an allocation per message and the
// whole batch copied again, a third of merlin's user CPU in a cold apply).
func (s *netlinkSocket) SendMessages(msgs []netlink.Message) error {
	s.wbuf = appendMessages(s.wbuf[:0], msgs)
	for {
		var serr error
		err := s.raw.Write(func(fd uintptr) bool {
			serr = unix.Sendmsg(int(fd), s.wbuf, nil, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}, unix.MSG_DONTWAIT)
			return !errors.Is(serr, unix.EAGAIN)
		})
		if err == nil {
			err = serr
		}
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

func (s *netlinkSocket) SetDeadline(t time.Time) error { return s.nl.SetDeadline(t) }

func (s *netlinkSocket) Close() error { return s.nl.Close() }

// Receive reads one datagram, waiting until the deadline.
func (s *netlinkSocket) Receive() ([]byte, error) {
	for {
		var n int
		var rerr error
		err := s.raw.Read(func(fd uintptr) bool {
			n, _, rerr = unix.Recvfrom(int(fd), s.rbuf, unix.MSG_DONTWAIT|unix.MSG_TRUNC)
			return !errors.Is(rerr, unix.EAGAIN)
		})
		if err == nil {
			err = rerr
		}
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if n > len(s.rbuf) {
			s.rbuf = make([]byte, n+4096)
			return nil, fmt.Errorf("netlink message of %d bytes truncated", n)
		}
		return s.rbuf[:n], nil
	}
}

// ReceiveQueued reads a datagram already queued, without waiting and
// regardless of the deadline.
func (s *netlinkSocket) ReceiveQueued() ([]byte, bool) {
	var n int
	var rerr error
	if err := s.raw.Control(func(fd uintptr) {
		n, _, rerr = unix.Recvfrom(int(fd), s.rbuf, unix.MSG_DONTWAIT|unix.MSG_TRUNC)
	}); err != nil || rerr != nil || n > len(s.rbuf) {
		return nil, false
	}
	return s.rbuf[:n], true
}
