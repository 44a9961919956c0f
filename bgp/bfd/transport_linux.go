package bfd

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"syscall"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// Port is where single-hop BFD control packets go (RFC 5881 §4).
const Port = 3784

type udpTransport struct{}

func defaultTransport() transport { return udpTransport{} }

// listen opens port 3784 for IPv4 and, where the kernel has it, IPv6.
func (udpTransport) listen(deliver func(netip.Addr, int, []byte)) (func(), error) {
	c4, err := net.ListenUDP("udp4", &net.UDPAddr{Port: Port})
	if err != nil {
		return nil, fmt.Errorf("listen udp4 :%d: %w", Port, err)
	}
	conns := []*net.UDPConn{c4}
	// The flags live in the PacketConn value as well as on the socket:
	// read through the same one, or no TTL comes back.
	p4 := ipv4.NewPacketConn(c4)
	if err := p4.SetControlMessage(ipv4.FlagTTL, true); err != nil {
		c4.Close()
		return nil, fmt.Errorf("IP_RECVTTL: %w", err)
	}
	var p6 *ipv6.PacketConn
	c6, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6unspecified, Port: Port})
	switch {
	case errors.Is(err, syscall.EAFNOSUPPORT) || errors.Is(err, syscall.EADDRNOTAVAIL):
		// no IPv6 on this node: IPv4 sessions only
	case err != nil:
		c4.Close()
		return nil, fmt.Errorf("listen udp6 :%d: %w", Port, err)
	default:
		p6 = ipv6.NewPacketConn(c6)
		if err := p6.SetControlMessage(ipv6.FlagHopLimit, true); err != nil {
			c4.Close()
			c6.Close()
			return nil, fmt.Errorf("IPV6_RECVHOPLIMIT: %w", err)
		}
		conns = append(conns, c6)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); read4(p4, deliver) }()
	if len(conns) == 2 {
		wg.Add(1)
		go func() { defer wg.Done(); read6(p6, deliver) }()
	}
	return func() {
		for _, c := range conns {
			c.Close()
		}
		wg.Wait()
	}, nil
}

// maxDatagram bounds what is read: a control packet with the largest
// authentication section is 24 + 28 bytes.
const maxDatagram = 128

func read4(c *ipv4.PacketConn, deliver func(netip.Addr, int, []byte)) {
	readLoop(func(b []byte) (int, int, net.Addr, error) {
		n, cm, src, err := c.ReadFrom(b)
		if cm == nil && err == nil {
			return n, 0, src, errNoTTL
		}
		if err != nil {
			return n, 0, src, err
		}
		return n, cm.TTL, src, nil
	}, deliver)
}

func read6(c *ipv6.PacketConn, deliver func(netip.Addr, int, []byte)) {
	readLoop(func(b []byte) (int, int, net.Addr, error) {
		n, cm, src, err := c.ReadFrom(b)
		if cm == nil && err == nil {
			return n, 0, src, errNoTTL
		}
		if err != nil {
			return n, 0, src, err
		}
		return n, cm.HopLimit, src, nil
	}, deliver)
}

var errNoTTL = errors.New("no TTL with the datagram")

// readLoop delivers datagrams until the socket is closed; one that cannot
// be read or has no TTL is skipped.
func readLoop(read func([]byte) (n, ttl int, src net.Addr, err error), deliver func(netip.Addr, int, []byte)) {
	b := make([]byte, maxDatagram)
	for {
		n, ttl, src, err := read(b)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if a, ok := src.(*net.UDPAddr); ok && err == nil {
			deliver(a.AddrPort().Addr(), ttl, b[:n])
		}
	}
}

type udpSender struct {
	c  *net.UDPConn
	to netip.AddrPort
}

// open binds a source port in 49152–65535 (RFC 5881 §4) and sends with a
// TTL of 255 (§5), so the peer can tell the packets came from next door.
func (udpTransport) open(peer, local netip.Addr) (sender, error) {
	network := "udp4"
	if peer.Is6() && !peer.Is4In6() {
		network = "udp6"
	}
	var lastErr error
	for range 16 {
		laddr := &net.UDPAddr{IP: local.AsSlice(), Zone: local.Zone(), Port: 49152 + rand.IntN(16384)}
		c, err := net.ListenUDP(network, laddr)
		if errors.Is(err, syscall.EADDRINUSE) {
			lastErr = err
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("bind %s: %w", laddr, err)
		}
		if network == "udp4" {
			err = ipv4.NewConn(c).SetTTL(255)
		} else {
			err = ipv6.NewConn(c).SetHopLimit(255)
		}
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("set TTL 255: %w", err)
		}
		return &udpSender{c: c, to: netip.AddrPortFrom(peer, Port)}, nil
	}
	return nil, fmt.Errorf("no free source port in 49152-65535: %w", lastErr)
}

func (s *udpSender) send(b []byte) error {
	_, err := s.c.WriteToUDPAddrPort(b, s.to)
	return err
}

func (s *udpSender) close() { s.c.Close() }
